//! The outbox: rows left behind are re-sent; a stalled bus leaves pushes to the sweeper.

#![allow(unused_imports)]

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use broker_bridge::{
    AppCommand, Bus, Delivery, Envelope, InProcessConfig, NodeLink, Registry, SessionEntry, Target,
};
use serde_json::{Value, json};

use super::helpers::*;
use crate::common::{self, Db, TestApp, files_under, pdf_bytes, png_bytes, wait_until};
use crate::on_both;

async fn outbox_rows_left_behind_are_resent(db: Db) {
    let app = start(db).await;
    let mut link = node(&app, "n1", &[]).await;
    link.bind("chat.77").await.unwrap();
    let mut tx = app.ctx.store.write().await.unwrap();
    let headers = serde_json::to_string(&[("x-instar-message-id", "5")]).unwrap();
    social::store::chat::outbox_insert(
        tx.conn(),
        &social::store::chat::NewOutbox {
            target: "topic:chat.77",
            destination: "/topic/chat.77",
            content_type: Some("application/json"),
            headers: Some(&headers),
            body: b"{\"left\":\"behind\"}",
        },
        social::time::now_micros() - 10_000_000,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    // The sweeper started by `register` picks it up.
    let d = recv(&mut link).await;
    assert_eq!(d.envelope.destination, "/topic/chat.77");
    assert_eq!(&d.envelope.body[..], b"{\"left\":\"behind\"}");
    assert_eq!(header(&d, "x-instar-message-id"), Some("5"));
    assert_eq!(d.envelope.content_type.as_deref(), Some("application/json"));
    wait_until("the row to be deleted", || async {
        outbox_len(&app).await == 0
    })
    .await;
}
on_both!(outbox_rows_left_behind_are_resent);

async fn a_stalled_bus_leaves_the_push_for_the_sweeper(db: Db) {
    let app = TestApp::start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    quick_user(&app, "bob02", "Bob").await;
    let room = create_room(&app, &alice, &["bob02"]).await;

    // A second bus whose only node has a one-slot inbox, already full: publishes to it stall
    // (in-process backpressure) until the publish timeout.
    let bus = Bus::in_process(
        Registry::in_process(),
        InProcessConfig {
            node_inbox_capacity: 1,
            ..InProcessConfig::default()
        },
    );
    let mut link = bus.open_node("slow".into()).await.unwrap();
    link.bind(&format!("chat.{room}")).await.unwrap();
    bus.publish(
        Target::topic(format!("chat.{room}")),
        Envelope::new(format!("/topic/chat.{room}"), "filler"),
    )
    .await
    .unwrap();
    let ctx = app.ctx.with_bus(bus.clone());
    social::chat::register(&ctx, &bus);
    bus.submit(cmd(
        "/app/send",
        "alice01",
        json!({"chatRoomId": room, "message": "stalled"}),
    ))
    .await
    .unwrap();
    // Committed although the bus did not take the broadcast: the row stays.
    wait_until("the message to be stored", || async {
        count_rows(
            &app,
            "SELECT COUNT(*) FROM chatroom_message WHERE chatroom_id = ?",
            room,
        )
        .await
            == 1
    })
    .await;
    tokio::time::sleep(social::outbox::PUBLISH_TIMEOUT + Duration::from_millis(500)).await;
    assert!(outbox_len(&app).await >= 1);

    // The node drains; a sweep re-sends the broadcast, then the row is gone.
    let filler = recv(&mut link).await;
    assert_eq!(&filler.envelope.body[..], b"filler");
    let mut delivered = 0;
    for _ in 0..100 {
        delivered += ctx.outbox.sweep(Duration::ZERO).await.unwrap();
        if delivered > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(delivered > 0);
    let d = recv(&mut link).await;
    let m = json_of(&d);
    assert_eq!(m["message"], "stalled");
    assert_eq!(
        header(&d, "x-instar-message-id"),
        Some(m["messageId"].to_string().as_str())
    );
    wait_until("the outbox to empty", || async {
        ctx.outbox.sweep(Duration::ZERO).await.unwrap();
        outbox_len(&app).await == 0
    })
    .await;
}
on_both!(a_stalled_bus_leaves_the_push_for_the_sweeper);
