//! A session that SENDs faster than `send_rate` (bursts of five seconds' worth) gets an ERROR and
//! is closed, while other sessions go on; before the limit one session could submit without bound.

mod common;

use std::time::Duration;

use common::{TestGateway, token};
use futures_util::{SinkExt, StreamExt};
use stomp::{Command, Frame, Item, StompCodec};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

async fn connect(gw: &TestGateway, user: &str) -> Framed<TcpStream, StompCodec> {
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
    let f = next(&mut framed).await.expect("CONNECTED");
    assert_eq!(f.command, Command::Connected);
    framed
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
