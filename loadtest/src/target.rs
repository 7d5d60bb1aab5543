//! Which servers the harness may load: loopback only.
//!
//! A load generator pointed at the wrong host is a denial-of-service tool, so every URL is checked
//! before anything connects: the scheme must be `ws://` (no TLS support is compiled in), and the host
//! must be an IPv4 address in 127.0.0.0/8, `::1`, or the name `localhost` (which we resolve ourselves to
//! 127.0.0.1, never through DNS).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tokio_tungstenite::tungstenite::http::Uri;

/// Why a URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("'{0}' is not a valid URL")]
    Invalid(String),
    #[error("'{0}': only ws:// URLs are supported")]
    Scheme(String),
    #[error("'{0}': has no host")]
    NoHost(String),
    #[error("'{0}': refusing a non-loopback host (only 127.0.0.0/8, ::1 and localhost)")]
    NotLoopback(String),
}

/// A checked WebSocket endpoint: the URL to put in the handshake and the loopback address to dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The URL as given (used for the HTTP request line and `Host` header).
    pub url: String,
    /// Where to connect.
    pub addr: SocketAddr,
}

/// Parses `url` and accepts it only if it names a loopback host.
///
/// ```
/// assert!(loadtest::target::check_loopback("ws://127.0.0.1:15674/ws").is_ok());
/// assert!(loadtest::target::check_loopback("ws://10.0.0.1/ws").is_err());
/// ```
pub fn check_loopback(url: &str) -> Result<Target, TargetError> {
    let uri: Uri = url
        .parse()
        .map_err(|_| TargetError::Invalid(url.to_owned()))?;
    match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("ws") => {}
        Some(_) => return Err(TargetError::Scheme(url.to_owned())),
        None => return Err(TargetError::Invalid(url.to_owned())),
    }
    let host = uri
        .host()
        .ok_or_else(|| TargetError::NoHost(url.to_owned()))?;
    let port = uri.port_u16().unwrap_or(80);
    let ip = loopback_ip(host).ok_or_else(|| TargetError::NotLoopback(url.to_owned()))?;
    Ok(Target {
        url: url.to_owned(),
        addr: SocketAddr::new(ip, port),
    })
}

/// The loopback address `host` stands for, if it is one. `host` may carry IPv6 brackets.
pub fn loopback_ip(host: &str) -> Option<IpAddr> {
    if host.eq_ignore_ascii_case("localhost") {
        return Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let ip: IpAddr = bare.parse().ok()?;
    let ok = match ip {
        IpAddr::V4(v4) => v4.octets()[0] == 127,
        IpAddr::V6(v6) => v6.is_loopback(),
    };
    ok.then_some(ip)
}
