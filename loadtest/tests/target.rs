//! The loopback-only URL check.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use loadtest::target::{TargetError, check_loopback};

#[test]
fn accepts_loopback_hosts() {
    let t = check_loopback("ws://127.0.0.1:15674/ws").expect("127.0.0.1");
    assert_eq!(t.addr, SocketAddr::from(([127, 0, 0, 1], 15674)));
    let t = check_loopback("ws://127.3.2.1/stomp").expect("all of 127/8");
    assert_eq!(t.addr, SocketAddr::from(([127, 3, 2, 1], 80)));
    let t = check_loopback("ws://localhost:8080/stomp").expect("localhost");
    assert_eq!(t.addr.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    let t = check_loopback("ws://[::1]:8080/stomp").expect("::1");
    assert_eq!(t.addr.ip(), IpAddr::V6(Ipv6Addr::LOCALHOST));
    assert!(check_loopback("WS://LOCALHOST:1/x").is_ok());
}

#[test]
fn refuses_other_hosts() {
    for url in [
        "ws://10.0.0.1:8080/stomp",
        "ws://128.0.0.1/ws",
        "ws://126.255.255.255/ws",
        "ws://0.0.0.0:8080/stomp",
        "ws://example.com/ws",
        "ws://127.0.0.1.example.com/ws",
        "ws://localhost.example.com/ws",
        "ws://[::2]/ws",
        "ws://[::ffff:10.0.0.1]/ws",
        "ws://user@192.168.1.1/ws",
    ] {
        assert!(
            matches!(check_loopback(url), Err(TargetError::NotLoopback(_))),
            "{url} must be refused as non-loopback"
        );
    }
}

#[test]
fn refuses_other_schemes_and_garbage() {
    assert!(matches!(
        check_loopback("wss://127.0.0.1/ws"),
        Err(TargetError::Scheme(_))
    ));
    assert!(matches!(
        check_loopback("http://127.0.0.1/ws"),
        Err(TargetError::Scheme(_))
    ));
    assert!(check_loopback("127.0.0.1:8080").is_err());
    assert!(check_loopback("").is_err());
    assert!(check_loopback("ws://").is_err());
}
