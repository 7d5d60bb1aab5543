//! The gateway's membership queries: subscription policy and replay.

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

async fn subscription_policy_and_replay(db: Db) {
    let app = start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    let bob = quick_user(&app, "bob02", "Bob").await;
    quick_user(&app, "carol03", "Carol").await;
    quick_user(&app, "eve", "Eve").await;
    let room = create_room(&app, &alice, &["bob02", "carol03"]).await;
    let ctx = &app.ctx;

    for topic in [format!("chat.{room}"), format!("members.info.{room}")] {
        assert!(ctx.may_subscribe_topic("alice01", &topic).await, "{topic}");
        assert!(!ctx.may_subscribe_topic("eve", &topic).await, "{topic}");
    }
    for topic in [
        format!("chat/{room}"),
        format!("members/info/{room}"),
        "chat.*".to_owned(),
        "#".to_owned(),
        format!("chat.0{room}"),
        "chat.999999".to_owned(),
        "other".to_owned(),
    ] {
        assert!(!ctx.may_subscribe_topic("alice01", &topic).await, "{topic}");
    }

    let mut link = node(&app, "n1", &[]).await;
    link.bind(&format!("chat.{room}")).await.unwrap();
    let mut broadcast = Vec::new();
    for i in 0..5 {
        send(&app, "alice01", room, &format!("r{i}")).await;
        let d = recv(&mut link).await;
        let id: i64 = header(&d, "x-instar-message-id").unwrap().parse().unwrap();
        broadcast.push((id, d.envelope.body.to_vec()));
    }
    let replay = ctx
        .chat_messages_after("bob02", room, broadcast[1].0, 100)
        .await
        .unwrap();
    assert_eq!(replay, broadcast[2..].to_vec());
    let replay = ctx.chat_messages_after("bob02", room, 0, 2).await.unwrap();
    assert_eq!(replay, broadcast[..2].to_vec());
    assert!(matches!(
        ctx.chat_messages_after("eve", room, 0, 10).await,
        Err(social::chat::ReplayError::NotMember)
    ));

    // After leaving: no subscription, no replay.
    assert_eq!(leave(&app, &bob, room).await.0, 200);
    assert!(
        !ctx.may_subscribe_topic("bob02", &format!("chat.{room}"))
            .await
    );
    assert!(ctx.chat_messages_after("bob02", room, 0, 10).await.is_err());
}
on_both!(subscription_policy_and_replay);
