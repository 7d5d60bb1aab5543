//! Per-session and per-user limits: a session that SENDs faster than `send_rate` (bursts of five
//! seconds' worth) gets an ERROR and is closed while other sessions go on, and a user holds at most
//! `max_sessions_per_user` sessions on a node. Before, one session could submit without bound and
//! one account could open sessions until the node ran out of memory.

mod common;

use std::time::Duration;

use common::{TestGateway, token};
use futures_util::{SinkExt, StreamExt};
use stomp::{Command, Frame, Item, StompCodec};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

async fn connect(gw: &TestGateway, user: &str) -> Framed<TcpStream, StompCodec> {
    let (framed, f) = try_connect(gw, user).await;
    assert_eq!(f.command, Command::Connected, "{f:?}");
    framed
}

/// CONNECTs as `user`; the connection and the first frame answered.
async fn try_connect(gw: &TestGateway, user: &str) -> (Framed<TcpStream, StompCodec>, Frame) {
    let stream = TcpStream::connect(gw.tcp).await.expect("tcp");
    let mut framed = Framed::new(stream, StompCodec::default());
    framed
        .send(
            Frame::new(Command::Connect)
                .header("accept-version", "1.2")
                .header("Authorization", format!("Bearer {}", token(user, 3600))),
        )
        .await
        .expect("send");
    let f = next(&mut framed).await.expect("an answer to CONNECT");
    (framed, f)
}

async fn next(framed: &mut Framed<TcpStream, StompCodec>) -> Option<Frame> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), framed.next()).await {
            Ok(Some(Ok(Item::Frame(f)))) => return Some(f),
            Ok(Some(Ok(Item::HeartBeat))) => continue,
            _ => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_session_is_cut_at_its_send_rate_and_others_go_on() {
    let mut gw = TestGateway::start_with(|c| c.send_rate = 10).await;
    let mut flood = connect(&gw, "flooder").await;
    let mut calm = connect(&gw, "calm").await;
    for i in 0..200 {
        let f = Frame::new(Command::Send)
            .header("destination", "/app/chat")
            .with_body(format!("spam {i}"));
        if flood.send(f).await.is_err() {
            break;
        }
    }
    let e = next(&mut flood).await.expect("an ERROR");
    assert_eq!(e.command, Command::Error, "{e:?}");
    assert!(
        e.get("message")
            .unwrap_or_default()
            .contains("too many messages"),
        "{e:?}"
    );
    assert!(next(&mut flood).await.is_none(), "closed after the ERROR");
    // At most the burst (and what refilled meanwhile) reached the application.
    let mut accepted = 0;
    while let Ok(Some(_)) =
        tokio::time::timeout(Duration::from_millis(300), gw.commands.recv()).await
    {
        accepted += 1;
    }
    assert!((50..60).contains(&accepted), "{accepted} commands accepted");
    assert_eq!(
        gw.gw
            .metrics
            .send_rate_closes
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // Another session is unaffected.
    calm.send(
        Frame::new(Command::Send)
            .header("destination", "/app/chat")
            .header("receipt", "r1")
            .with_body("hello"),
    )
    .await
    .unwrap();
    let r = next(&mut calm).await.expect("RECEIPT");
    assert_eq!(r.command, Command::Receipt, "{r:?}");
    let cmd = gw.commands.recv().await.expect("the calm SEND");
    assert_eq!(cmd.principal, "calm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_holds_at_most_its_sessions_per_node() {
    let gw = TestGateway::start_with(|c| c.max_sessions_per_user = 2).await;
    let first = connect(&gw, "many").await;
    let _second = connect(&gw, "many").await;
    let (mut third, e) = try_connect(&gw, "many").await;
    assert_eq!(e.command, Command::Error, "{e:?}");
    assert!(
        e.get("message")
            .unwrap_or_default()
            .contains("too many sessions"),
        "{e:?}"
    );
    assert!(next(&mut third).await.is_none(), "closed after the ERROR");
    // Another user is not affected, and a closed session frees its place.
    let _other = connect(&gw, "someone").await;
    drop(first);
    let mut admitted = false;
    for _ in 0..50 {
        let (_conn, f) = try_connect(&gw, "many").await;
        if f.command == Command::Connected {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(admitted, "a freed place is given again");
    assert!(
        gw.gw
            .metrics
            .sessions_refused
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_sessions_share_twice_the_session_rate() {
    // Each session may burst 50; the user's sessions together 100.
    let mut gw = TestGateway::start_with(|c| c.send_rate = 10).await;
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(connect(&gw, "crowd").await);
    }
    for s in &mut sessions {
        for i in 0..45 {
            let f = Frame::new(Command::Send)
                .header("destination", "/app/chat")
                .with_body(format!("m {i}"));
            if s.send(f).await.is_err() {
                break;
            }
        }
    }
    let mut accepted = 0;
    while let Ok(Some(_)) =
        tokio::time::timeout(Duration::from_millis(300), gw.commands.recv()).await
    {
        accepted += 1;
    }
    assert!(
        (100..110).contains(&accepted),
        "{accepted} commands accepted"
    );
    // The session that ran the user's bucket dry was told why and closed.
    let mut told = 0;
    for s in &mut sessions {
        if let Ok(Some(Ok(Item::Frame(f)))) =
            tokio::time::timeout(Duration::from_millis(500), s.next()).await
        {
            assert_eq!(f.command, Command::Error, "{f:?}");
            assert!(
                f.get("message").unwrap_or_default().contains("per user"),
                "{f:?}"
            );
            told += 1;
        }
    }
    assert!(told >= 1, "no session was told");
}
