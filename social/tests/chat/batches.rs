//! Batched sends: order, byte-for-byte storage, linger, clean-ups, rebuilds, fallbacks, the remembered-participants path.

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

/// Runs `futs` concurrently, polling them in order (so the first poll of each, which queues a
/// send, happens in order); their outputs in order.
async fn in_order<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    use std::task::Poll;
    let mut futs: Vec<std::pin::Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in futs.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *slot = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(Option::unwrap).collect()
}

/// alice01's sends of `texts` to `room`, queued in order at once; their answers in order.
async fn alice_sends<T: AsRef<str>>(
    writer: &social::chat::writer::SendWriter,
    room: i64,
    texts: &[T],
) -> Vec<Result<i64, social::chat::ChatError>> {
    in_order(
        texts
            .iter()
            .map(|t| writer.send("alice01", room, t.as_ref()))
            .collect(),
    )
    .await
}

async fn batched_sends_keep_order_and_refuse_one_by_one(db: Db) {
    use std::sync::atomic::Ordering;
    let app = start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    let bob = quick_user(&app, "bob02", "Bob").await;
    quick_user(&app, "carol03", "Carol").await;
    quick_user(&app, "dave04", "Dave").await;
    let group = create_room(&app, &alice, &["bob02", "carol03"]).await;
    let dm = create_room(&app, &alice, &["bob02"]).await;
    let other = create_room(&app, &alice, &["carol03"]).await;
    // Bob hides the DM: the first batched message brings it back for him.
    let (status, _) = leave(&app, &bob, dm).await;
    assert_eq!(status, 200);
    let rooms = [group, dm, other];
    let mut link = node(&app, "n1", &["alice01", "bob02", "carol03"]).await;
    for r in rooms {
        link.bind(&format!("chat.{r}")).await.unwrap();
    }
    drain(&mut link, 200).await;

    let writer = social::chat::writer::SendWriter::start(&app.ctx, 2).unwrap();
    let members = |room: i64| -> &'static [&'static str] {
        if room == group {
            &["alice01", "bob02", "carol03"]
        } else if room == dm {
            &["alice01"]
        } else {
            &["alice01", "carol03"]
        }
    };
    // 300 sends queued at once, every tenth from a non-member.
    let sends: Vec<(i64, String, String)> = (0..300)
        .map(|i| {
            let room = rooms[i % 3];
            let sender = if i % 10 == 9 {
                "dave04".to_owned()
            } else {
                let m = members(room);
                m[(i / 3) % m.len()].to_owned()
            };
            (room, sender, format!("batch {i}"))
        })
        .collect();
    let answers = in_order(
        sends
            .iter()
            .map(|(room, sender, text)| writer.send(sender, *room, text))
            .collect(),
    )
    .await;

    let mut expected: std::collections::HashMap<i64, Vec<(i64, String)>> = Default::default();
    for ((room, sender, text), answer) in sends.iter().zip(&answers) {
        if sender == "dave04" {
            assert!(
                matches!(
                    answer,
                    Err(social::chat::ChatError::Refused("not a member"))
                ),
                "{answer:?}"
            );
        } else {
            let id = *answer.as_ref().unwrap();
            expected.entry(*room).or_default().push((id, text.clone()));
        }
    }
    let stats = writer.stats();
    assert_eq!(stats.refused.load(Ordering::Relaxed), 30);
    assert_eq!(stats.messages.load(Ordering::Relaxed), 270);
    assert_eq!(stats.fallbacks.load(Ordering::Relaxed), 0);
    let batches = stats.batches.load(Ordering::Relaxed);
    assert!(batches < 20, "{batches} transactions for 270 messages");

    // Per room: ids rise in the order the sends were queued, the store holds exactly those
    // rows, the broadcasts arrive once each in id order, and the preview is the last one.
    let mut broadcast: std::collections::HashMap<i64, Vec<i64>> = Default::default();
    let mut alarms: std::collections::HashMap<String, usize> = Default::default();
    let mut create_room = 0;
    for d in drain(&mut link, 1500).await {
        match &d.target {
            Target::Topic(t) => {
                let m = json_of(&d);
                let room = m["chatRoomId"].as_i64().unwrap();
                assert_eq!(t, &format!("chat.{room}"));
                assert_eq!(
                    header(&d, "x-instar-message-id"),
                    Some(m["messageId"].to_string().as_str())
                );
                broadcast
                    .entry(room)
                    .or_default()
                    .push(m["messageId"].as_i64().unwrap());
            }
            Target::User { user, .. } => {
                let a = json_of(&d);
                if a["alarmType"] == "CREATE_ROOM" {
                    assert_eq!(user, "bob02");
                    create_room += 1;
                } else {
                    assert_eq!(a["alarmType"], "CHAT");
                    *alarms.entry(user.clone()).or_default() += 1;
                }
            }
        }
    }
    assert_eq!(create_room, 1);
    for r in rooms {
        let want = &expected[&r];
        let ids: Vec<i64> = want.iter().map(|(id, _)| *id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        assert_eq!(broadcast[&r], ids);
        let stored: Vec<(i64, String)> = sqlx::query_as(
            "SELECT id, message FROM chatroom_message WHERE chatroom_id = ? AND type = 'TEXT' \
             ORDER BY id",
        )
        .bind(r)
        .fetch_all(app.ctx.store.pool())
        .await
        .unwrap();
        assert_eq!(&stored, want);
        let listed = room_in(&room_list(&app, &alice).await, r).unwrap();
        assert_eq!(listed["lastMessage"], want.last().unwrap().1.as_str());
    }
    // CHAT alarms: one per message to each member (bob is back in the DM).
    let n = |r: i64| expected[&r].len();
    assert_eq!(alarms["alice01"], n(group) + n(dm) + n(other));
    assert_eq!(alarms["bob02"], n(group) + n(dm));
    assert_eq!(alarms["carol03"], n(group) + n(other));
    let hidden: i64 = sqlx::query_scalar(
        "SELECT is_hidden FROM chatroom_participant WHERE chatroom_id = ? AND user_id = 'bob02'",
    )
    .bind(dm)
    .fetch_one(app.ctx.store.pool())
    .await
    .unwrap();
    assert_eq!(hidden, 0);
    outbox_drains(&app).await;
    // Checks that need no database are made before queueing.
    assert!(writer.send("alice01", group, " ").await.is_err());
    assert!(writer.send("alice01", 999_999, "x").await.is_err());
}
on_both!(batched_sends_keep_order_and_refuse_one_by_one);

/// The writer sends a batch's values as literals in a multi-statement script
/// (`social::store::script`): every text arrives byte for byte, none is read as SQL.
async fn batched_texts_are_stored_byte_for_byte(db: Db) {
    let (app, alice, room, mut link) = dm_with_link(db).await;
    let writer = social::chat::writer::SendWriter::start(&app.ctx, 1).unwrap();
    let long: String = "가".repeat(social::chat::MAX_MESSAGE_CHARS);
    let texts: Vec<String> = vec![
        "it's".into(),
        "'); DROP TABLE chatroom_message; --".into(),
        "back\\slash \\' \\\"".into(),
        "nul \0 inside".into(),
        "quote \" and ` and ;\n; COMMIT;".into(),
        "100% _under_ %".into(),
        "안녕하세요 😀 👩‍👩‍👧".into(),
        "X'41' _utf8mb4 X'41' CAST(X'41' AS TEXT)".into(),
        "\r\n\ttabs".into(),
        long,
    ];
    let answers = alice_sends(&writer, room, &texts).await;
    let ids: Vec<i64> = answers.into_iter().map(Result::unwrap).collect();
    let stored: Vec<(i64, String)> = sqlx::query_as(
        "SELECT id, message FROM chatroom_message WHERE chatroom_id = ? AND type = 'TEXT' \
         ORDER BY id",
    )
    .bind(room)
    .fetch_all(app.ctx.store.pool())
    .await
    .unwrap();
    let want: Vec<(i64, String)> = ids.iter().copied().zip(texts.iter().cloned()).collect();
    assert_eq!(stored, want);
    let listed = room_in(&room_list(&app, &alice).await, room).unwrap();
    assert_eq!(
        listed["lastMessage"].as_str(),
        texts.last().map(String::as_str)
    );
    let broadcast = broadcast_texts(&mut link).await;
    assert_eq!(broadcast, texts);
    outbox_drains(&app).await;
}
on_both!(batched_texts_are_stored_byte_for_byte);

/// A writer starts a batch at most once per linger while sends keep coming: after a first batch,
/// two sends queued 20 ms apart inside a 300 ms linger are written together; with no linger the
/// second is written alone.
async fn sends_inside_the_linger_share_a_batch(db: Db) {
    use social::chat::writer::SendWriter;
    use std::sync::atomic::Ordering;
    let (app, _alice, room, _link) = dm_with_link(db).await;
    for (linger_ms, batches) in [(300, 2), (0, 3)] {
        let writer = SendWriter::start_with(&app.ctx, 1, Duration::from_millis(linger_ms)).unwrap();
        writer.send("alice01", room, "first").await.unwrap();
        let second = writer.enqueue("alice01", room, "second").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let third = writer.enqueue("alice01", room, "third").await.unwrap();
        let (second, third) = (second.await.unwrap(), third.await.unwrap());
        assert!(third > second);
        assert_eq!(
            writer.stats().batches.load(Ordering::Relaxed),
            batches,
            "linger {linger_ms} ms"
        );
    }
}
on_both!(sends_inside_the_linger_share_a_batch);

/// Delivered batches' outbox rows are not deleted one statement per batch: they ride on a later
/// batch once `CLEANUP_ROWS` have gathered, and go on their own after an idle spell, before the
/// sweeper would take them for undelivered (every broadcast arrives once).
async fn delivered_rows_are_deleted_together(db: Db) {
    use social::chat::writer::{CLEANUP_ROWS, SendWriter};
    use std::sync::atomic::Ordering;
    let (app, _alice, room, mut link) = dm_with_link(db).await;
    let writer = SendWriter::start(&app.ctx, 1).unwrap();
    let n = CLEANUP_ROWS + 8;
    let texts: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
    for t in &texts {
        // One at a time: a batch each.
        writer.send("alice01", room, t).await.unwrap();
    }
    let stats = writer.stats();
    assert_eq!(stats.batches.load(Ordering::Relaxed), n as u64);
    let after_sends = stats.cleanups.load(Ordering::Relaxed);
    // One riding clean-up (plus one for each idle spell of 200 ms between two sends, if the
    // machine was that slow), not one per batch.
    assert!(
        (1..n as u64 / 4).contains(&after_sends),
        "{after_sends} clean-ups for {n} batches"
    );
    outbox_drains(&app).await;
    // The rows left after the riding clean-up went on their own after an idle spell: at least
    // one more clean-up in all (on a stalled machine it may have run before `after_sends` was
    // read, so the total is what is checked; a sweeper re-publish would show below as a
    // broadcast received twice).
    let total = stats.cleanups.load(Ordering::Relaxed);
    assert!(
        (2..n as u64 / 4).contains(&total),
        "{total} clean-ups in all for {n} batches"
    );
    assert_eq!(broadcast_texts(&mut link).await, texts);
    // The counters reach /metrics, summed over the context's writers.
    let text = app.ctx.metrics_text();
    assert!(
        text.contains(&format!("\ninstar_chat_messages_total {n}\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "\ninstar_chat_outbox_cleanups_total {}\n",
            stats.cleanups.load(Ordering::Relaxed)
        )),
        "{text}"
    );
}
on_both!(delivered_rows_are_deleted_together);

/// Writes the outbox row a writer leaves for a batch of messages `ids` (what a process that died
/// between the batch's commit and its pushes leaves), created `age_micros` ago.
async fn left_behind(app: &TestApp, ids: &[i64], age_micros: i64) {
    let mut tx = app.ctx.store.write().await.unwrap();
    let body = serde_json::to_vec(ids).unwrap();
    social::store::chat::outbox_insert(
        tx.conn(),
        &social::store::chat::NewOutbox {
            target: social::chat::writer::MESSAGES_TARGET,
            destination: "/topic/chat",
            content_type: Some("application/json"),
            headers: None,
            body: &body,
        },
        social::time::now_micros() - age_micros,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

/// A batch's outbox row names its messages; the sweeper rebuilds their pushes from the store.
async fn a_batch_row_left_behind_is_rebuilt_from_the_store(db: Db) {
    let (app, alice, room, mut link) = dm_with_link(db).await;
    let ids = insert_messages(&app, room, "alice01", 2).await;
    left_behind(&app, &ids, 10_000_000).await;

    let mut topic = Vec::new();
    let mut alarms = Vec::new();
    while topic.len() < 2 || alarms.len() < 4 {
        let d = recv(&mut link).await;
        match &d.target {
            Target::Topic(_) => topic.push(d),
            Target::User { .. } => alarms.push(d),
        }
    }
    let (_, hist) = history_page(&app, &alice, room, None).await;
    for (d, id) in topic.iter().zip(&ids) {
        assert_eq!(
            header(d, "x-instar-message-id"),
            Some(id.to_string().as_str())
        );
        let m = json_of(d);
        assert_eq!(m["messageId"], *id);
        // The same JSON as the history (newest first there).
        let same = hist["list"].as_array().unwrap().contains(&m);
        assert!(same, "{m} not in {hist}");
    }
    for a in &alarms {
        assert_eq!(json_of(a)["alarmType"], "CHAT");
    }
    wait_until("the row to be deleted", || async {
        outbox_len(&app).await == 0
    })
    .await;
}
on_both!(a_batch_row_left_behind_is_rebuilt_from_the_store);

/// A batch whose script fails part-way (here a trigger refuses one message) leaves nothing: the
/// transaction is rolled back with its connection, and the sends are written one at a time, so
/// only the bad one is refused and the others are stored and broadcast once each.
async fn a_failed_batch_is_rolled_back_and_retried_one_by_one(db: Db) {
    use std::sync::atomic::Ordering;
    let (app, _, room, mut link) = dm_with_link(db).await;
    let trigger = match db {
        Db::Sqlite => {
            "CREATE TRIGGER refuse_boom BEFORE INSERT ON chatroom_message \
             WHEN NEW.message = 'boom' BEGIN SELECT RAISE(ABORT, 'boom refused'); END"
        }
        Db::MySql => {
            "CREATE TRIGGER refuse_boom BEFORE INSERT ON chatroom_message FOR EACH ROW \
             IF NEW.message = 'boom' THEN \
             SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'boom refused'; END IF"
        }
    };
    sqlx::raw_sql(trigger)
        .execute(app.ctx.store.pool())
        .await
        .unwrap();

    let writer = social::chat::writer::SendWriter::start(&app.ctx, 1).unwrap();
    let texts = ["first", "boom", "last"];
    let answers = alice_sends(&writer, room, &texts).await;
    assert!(answers[0].is_ok() && answers[2].is_ok(), "{answers:?}");
    assert!(answers[1].is_err(), "{answers:?}");
    assert_eq!(writer.stats().fallbacks.load(Ordering::Relaxed), 1);
    let stored: Vec<String> = sqlx::query_scalar(
        "SELECT message FROM chatroom_message WHERE chatroom_id = ? AND type = 'TEXT' ORDER BY id",
    )
    .bind(room)
    .fetch_all(app.ctx.store.pool())
    .await
    .unwrap();
    assert_eq!(stored, ["first", "last"]);
    let broadcast = broadcast_texts(&mut link).await;
    assert_eq!(broadcast, ["first", "last"]);
    outbox_drains(&app).await;
    // The failed transaction's connection did not come back to the pool half-open, and (SQLite)
    // the writer queue was released: the next batch goes through.
    let id = writer.send("alice01", room, "after").await.unwrap();
    assert!(id > *answers[2].as_ref().unwrap());
    assert_eq!(writer.stats().fallbacks.load(Ordering::Relaxed), 1);
}
on_both!(a_failed_batch_is_rolled_back_and_retried_one_by_one);

/// The writer's own outbox row (its body computed by the database from the insert's id, in the
/// same script as the messages) is rebuilt by the sweeper when the pushes were not published.
async fn a_batch_row_written_by_the_database_is_rebuilt(db: Db) {
    use social::store::chat::{self as sql, InsertedIds, NewMessage, NewOutbox};
    use social::store::script::Script;
    let (app, _, room, mut link) = dm_with_link(db).await;

    let store = &app.ctx.store;
    let d = store.dialect();
    let mut tx = store.script_write().await.unwrap();
    let how = InsertedIds::probe(tx.conn().unwrap(), d).await.unwrap();
    let InsertedIds::Consecutive(step) = how else {
        panic!("the test servers give consecutive ids");
    };
    let texts = ["one", "two", "three"];
    let rows: Vec<NewMessage<'_>> = texts
        .iter()
        .map(|t| NewMessage {
            room,
            sender: "alice01",
            message: t,
            kind: "TEXT",
            command: None,
        })
        .collect();
    let at = social::time::now_micros() - 10_000_000;
    let mut script = Script::new(d);
    script.sql(tx.begin()).end();
    sql::script_insert_messages(&mut script, d, &rows, at, how, 3);
    sql::script_batch_outbox_insert(
        &mut script,
        d,
        &NewOutbox {
            target: social::chat::writer::MESSAGES_TARGET,
            destination: "/topic/chat",
            content_type: Some("application/json"),
            headers: None,
            body: b"",
        },
        rows.len(),
        step,
        at,
        4,
    );
    script.sql("COMMIT").end();
    let result = script.run(tx.conn().unwrap()).await.unwrap();
    tx.committed();
    drop(tx);
    let ids = sql::inserted_message_ids(&result, d, &rows, how, 3).unwrap();
    let row = sql::inserted_row_id(&result, 4).unwrap();
    let body: Vec<u8> = sqlx::query_scalar("SELECT body FROM outbox WHERE id = ?")
        .bind(row)
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8(body).unwrap(),
        format!(r#"{{"first":{},"count":3,"step":{step}}}"#, ids[0])
    );

    let mut topic = Vec::new();
    while topic.len() < 3 {
        let d = recv(&mut link).await;
        if let Target::Topic(_) = &d.target {
            topic.push(json_of(&d));
        }
    }
    let got: Vec<(i64, String)> = topic
        .iter()
        .map(|m| {
            (
                m["messageId"].as_i64().unwrap(),
                m["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want: Vec<(i64, String)> = ids
        .iter()
        .copied()
        .zip(texts.iter().map(|t| (*t).to_owned()))
        .collect();
    assert_eq!(got, want);
    wait_until("the row to be deleted", || async {
        outbox_len(&app).await == 0
    })
    .await;
}
on_both!(a_batch_row_written_by_the_database_is_rebuilt);

/// An app with alice01, bob02 and carol03, and alice's DMs with bob02 and with carol03.
async fn two_dms(db: Db) -> (TestApp, i64, i64) {
    let app = start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    quick_user(&app, "bob02", "Bob").await;
    quick_user(&app, "carol03", "Carol").await;
    let a = create_room(&app, &alice, &["bob02"]).await;
    let b = create_room(&app, &alice, &["carol03"]).await;
    (app, a, b)
}

/// Both ways of finding a multi-row insert's ids give each row its own id, rooms interleaved.
async fn multi_row_insert_ids_match_their_rows(db: Db) {
    use social::store::chat::{self as sql, InsertedIds, NewMessage};
    let (app, a, b) = two_dms(db).await;
    let d = app.ctx.store.dialect();
    let mut tx = app.ctx.store.write().await.unwrap();
    let probed = InsertedIds::probe(tx.conn(), d).await.unwrap();
    tx.commit().await.unwrap();
    for how in [probed, InsertedIds::ReadBack] {
        let texts: Vec<String> = (0..9).map(|i| format!("{how:?} {i}")).collect();
        let rows: Vec<NewMessage<'_>> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| NewMessage {
                room: if i % 3 == 0 { b } else { a },
                sender: "alice01",
                message: t,
                kind: "TEXT",
                command: None,
            })
            .collect();
        let mut tx = app.ctx.store.script_write().await.unwrap();
        let mut script = social::store::script::Script::new(d);
        script.sql(tx.begin()).end();
        sql::script_lock_rooms(&mut script, d, &[a, b], 1);
        sql::script_insert_messages(&mut script, d, &rows, social::time::now_micros(), how, 2);
        let result = tx.commit_with(&mut script).await.unwrap();
        let ids = sql::inserted_message_ids(&result, d, &rows, how, 2).unwrap();
        assert_eq!(ids.len(), rows.len());
        for (id, row) in ids.iter().zip(&rows) {
            let (room, text): (i64, String) =
                sqlx::query_as("SELECT chatroom_id, message FROM chatroom_message WHERE id = ?")
                    .bind(id)
                    .fetch_one(app.ctx.store.pool())
                    .await
                    .unwrap();
            assert_eq!((room, text.as_str()), (row.room, row.message), "{how:?}");
        }
    }
}
on_both!(multi_row_insert_ids_match_their_rows);

/// On MySQL a batch script ends with its own `COMMIT`, guarded by a statement that stops the
/// script (transaction still open, nothing after it run) unless every room has the membership
/// version expected: a changed version and a room that is gone both stop it, recognisably, and
/// the rollback that follows leaves nothing behind. On SQLite the guard is not used (the writer
/// compares the versions it read before committing).
async fn version_check_stops_a_script_before_its_commit(db: Db) {
    use social::store::chat as sql;
    use social::store::script::Script;
    let (app, a, b) = two_dms(db).await;
    let d = app.ctx.store.dialect();
    let versions: Vec<(i64, i64)> =
        sqlx::query_as("SELECT id, member_version FROM chatroom WHERE id IN (?, ?) ORDER BY id")
            .bind(a)
            .bind(b)
            .fetch_all(app.ctx.store.pool())
            .await
            .unwrap();
    let messages = |room: i64| {
        let pool = app.ctx.store.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM chatroom_message WHERE chatroom_id = ? AND message LIKE 'guarded%'",
            )
            .bind(room)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    // A membership change moves room b's version on.
    sqlx::query("UPDATE chatroom SET member_version = member_version + 1 WHERE id = ?")
        .bind(b)
        .execute(app.ctx.store.pool())
        .await
        .unwrap();
    let moved_on = versions.clone();
    let versions = vec![versions[0], (versions[1].0, versions[1].1 + 1)];
    // Expected versions, then one wrong, then a room that does not exist, then room b as read
    // before its change, then a missing room in place of b with the same sum of versions (only
    // the count differs).
    let wrong = vec![versions[0], (versions[1].0, versions[1].1 + 1)];
    let gone = vec![versions[0], versions[1], (b + 1000, 1)];
    let short = vec![versions[0], (b + 1000, 0)];
    for (case, expected) in [
        ("current", versions.clone()),
        ("wrong", wrong),
        ("gone", gone),
        ("moved on", moved_on),
        ("short", short),
    ] {
        let rooms: Vec<i64> = expected.iter().map(|e| e.0).collect();
        let mut tx = app.ctx.store.script_write().await.unwrap();
        let mut script = Script::new(d);
        script.sql(tx.begin()).end();
        sql::script_lock_rooms(&mut script, d, &rooms, 1);
        let checked = sql::script_check_versions(&mut script, d, &expected, 2);
        assert_eq!(checked, d.0 == migrations::Backend::MySql, "{case}");
        if !checked {
            return;
        }
        script
            .sql("INSERT INTO chatroom_message (chatroom_id, sender_id, message, create_at, type) VALUES (")
            .int(a)
            .sql(", ")
            .text("alice01")
            .sql(", ")
            .text(&format!("guarded {case}"))
            .sql(", 1, 'TEXT')")
            .end();
        script.sql("COMMIT").end();
        match script.run(tx.conn().unwrap()).await {
            Ok(_) => {
                assert_eq!(case, "current");
                tx.committed();
            }
            Err(e) => {
                assert_ne!(case, "current", "{e}");
                assert!(sql::is_stale_rooms(&e), "{case}: {e}");
                tx.rollback().await.unwrap();
            }
        }
    }
    assert_eq!(
        messages(a).await,
        1,
        "only the script with current versions committed"
    );
    // An unrelated failure is not taken for a changed room.
    let mut conn = app.ctx.store.pool().acquire().await.unwrap();
    let mut script = Script::new(d);
    script.sql("SELECT no_such_column FROM chatroom").end();
    let e = script.run(&mut conn).await.unwrap_err();
    assert!(!sql::is_stale_rooms(&e), "{e}");
}
on_both!(version_check_stops_a_script_before_its_commit);

/// The writer remembers each room's participants between batches instead of reading them for
/// every batch, and trusts them only while the room's membership version is the one it read:
/// a leave, and a rejoin by invitation, made through another process are both seen by the
/// writer's very next batch (rolled back and written again after reading the participants).
async fn remembered_members_follow_changes_made_elsewhere(db: Db) {
    use social::chat::ChatError;
    use std::sync::atomic::Ordering;
    let app = start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    let bob = quick_user(&app, "bob02", "Bob").await;
    quick_user(&app, "carol03", "Carol").await;
    let group = create_room(&app, &alice, &["bob02", "carol03"]).await;
    let version = |app: &TestApp| {
        let pool = app.ctx.store.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT member_version FROM chatroom WHERE id = ?")
                .bind(group)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let created = version(&app).await;
    assert!(created >= 3, "one change per participant added: {created}");
    let other = app.second().await;
    let writer = social::chat::writer::SendWriter::start(&app.ctx, 1).unwrap();
    let stats = writer.stats();

    writer.send("bob02", group, "one").await.unwrap();
    assert_eq!(stats.known_batches.load(Ordering::Relaxed), 0);
    writer.send("bob02", group, "two").await.unwrap();
    assert_eq!(stats.known_batches.load(Ordering::Relaxed), 1);

    // Bob leaves through the other process: his next send is refused and nothing is stored.
    let (status, body) = leave(&other, &bob, group).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(version(&app).await, created + 1);
    let refused = writer.send("bob02", group, "after leaving").await;
    assert!(
        matches!(refused, Err(ChatError::Refused("not a member"))),
        "{refused:?}"
    );
    assert_eq!(stats.stale_batches.load(Ordering::Relaxed), 1);
    // Carol's sends go on from what was read again.
    writer.send("carol03", group, "three").await.unwrap();
    assert_eq!(stats.known_batches.load(Ordering::Relaxed), 2);

    // Alice invites Bob back through the other process: his next send is taken.
    let (status, body) = other
        .post(
            "/api/chat/invite/user",
            Some(&alice),
            json!({ "users": ["bob02"], "chatRoomId": group }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    writer.send("bob02", group, "back again").await.unwrap();
    assert_eq!(stats.stale_batches.load(Ordering::Relaxed), 1);
    assert_eq!(stats.known_batches.load(Ordering::Relaxed), 2);
    // Remembered again with Bob: his next send needs no participant read.
    writer.send("bob02", group, "and again").await.unwrap();
    assert_eq!(stats.known_batches.load(Ordering::Relaxed), 3);
    assert_eq!(stats.fallbacks.load(Ordering::Relaxed), 0);

    let stored: Vec<String> = sqlx::query_scalar(
        "SELECT message FROM chatroom_message WHERE chatroom_id = ? AND type = 'TEXT' ORDER BY id",
    )
    .bind(group)
    .fetch_all(app.ctx.store.pool())
    .await
    .unwrap();
    assert_eq!(stored, ["one", "two", "three", "back again", "and again"]);
}
on_both!(remembered_members_follow_changes_made_elsewhere);

/// A command redelivered by the bus (a social process died before acknowledging it, the broker
/// restarted) is recognised by the key the gateway gave it: answered with the message stored the
/// first time, never stored or pushed again, alone or in a batch with new sends. Its broadcast and
/// its `CHAT` alarms carry the message id, by which gateways drop a re-published copy.
async fn a_redelivered_command_is_stored_once(db: Db) {
    use social::chat::COMMAND_KEY_HEADER;
    use social::chat::writer::SendWriter;
    use std::sync::atomic::Ordering;
    let (app, _alice, room, mut link) = dm_with_link(db).await;
    let keyed = |key: &str, text: &str| AppCommand {
        headers: vec![(COMMAND_KEY_HEADER.to_owned(), key.to_owned())],
        ..cmd(
            "/app/send",
            "alice01",
            json!({ "chatRoomId": room, "message": text }),
        )
    };
    let stored = |text: &'static str| {
        let app = &app;
        async move {
            count_rows(
                app,
                &format!(
                    "SELECT COUNT(*) FROM chatroom_message WHERE chatroom_id = ? AND message = '{text}'"
                ),
                room,
            )
            .await
        }
    };

    // Through the bus, twice: one row, one broadcast, one alarm per member.
    assert!(!run_command(&app, keyed("p1.1", "once")).await);
    assert!(!run_command(&app, keyed("p1.1", "once")).await);
    assert_eq!(stored("once").await, 1);
    let got = drain(&mut link, 500).await;
    let broadcasts: Vec<_> = got
        .iter()
        .filter(|d| matches!(d.target, Target::Topic(_)))
        .collect();
    assert_eq!(broadcasts.len(), 1, "{got:?}");
    let id = header(broadcasts[0], social::chat::MESSAGE_ID_HEADER)
        .unwrap()
        .to_owned();
    let alarms: Vec<_> = got
        .iter()
        .filter(|d| matches!(d.target, Target::User { .. }))
        .collect();
    assert_eq!(alarms.len(), 2, "{got:?}");
    for a in &alarms {
        assert_eq!(json_of(a)["alarmType"], "CHAT");
        assert_eq!(
            header(a, social::chat::MESSAGE_ID_HEADER),
            Some(id.as_str())
        );
    }

    // In a batch with new sends: the batch's insert fails on the key, and one at a time the
    // redelivered send finds its message while the others are stored.
    let writer = SendWriter::start(&app.ctx, 1).unwrap();
    let first = writer
        .enqueue_command("alice01", room, "two", Some("p1.2"), None)
        .await
        .unwrap()
        .await
        .unwrap();
    let answers = in_order(vec![
        writer.enqueue_command("alice01", room, "three", Some("p1.3"), None),
        writer.enqueue_command("alice01", room, "two", Some("p1.2"), None),
        writer.enqueue_command("alice01", room, "four", Some("p1.4"), None),
    ])
    .await;
    let mut ids = Vec::new();
    for a in answers {
        ids.push(a.unwrap().await.unwrap());
    }
    assert_eq!(ids[1], first);
    assert!(ids[0] > first && ids[2] > ids[0], "{ids:?}");
    for text in ["two", "three", "four"] {
        assert_eq!(stored(text).await, 1, "{text}");
    }
    assert_eq!(writer.stats().duplicates.load(Ordering::Relaxed), 1);
    assert_eq!(broadcast_texts(&mut link).await, ["two", "three", "four"]);
    // A key is bound to its sender and room: another use of it is refused, not answered.
    assert!(
        writer
            .enqueue_command("bob02", room, "two", Some("p1.2"), None)
            .await
            .unwrap()
            .await
            .is_err()
    );
}
on_both!(a_redelivered_command_is_stored_once);

/// A process that died between a batch's commit and its pushes leaves the batch's outbox row;
/// the bus redelivers the batch's commands to the process that takes the room over. The first
/// redelivered send it recognises publishes that row at once, before the room's next message, so
/// the room's broadcasts keep message-id order across the crash (left to the sweeper, whose grace
/// is five seconds, the row's message would come after the next one).
async fn a_redelivered_send_publishes_what_its_dead_writer_left_first(db: Db) {
    use social::chat::writer::SendWriter;
    let (app, _alice, room, mut link) = dm_with_link(db).await;
    // The dead process's batch: stored with its command key, outbox row two seconds old (older
    // than the orphan age, younger than the sweeper's grace), never published.
    let ids = insert_messages(&app, room, "alice01", 1).await;
    let mut tx = app.ctx.store.write().await.unwrap();
    sqlx::query("UPDATE chatroom_message SET command_key = 'dead.1' WHERE id = ?")
        .bind(ids[0])
        .execute(tx.conn())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    left_behind(&app, &ids, 2_000_000).await;

    // The redelivered send and the room's next message, in one batch.
    let writer = SendWriter::start(&app.ctx, 1).unwrap();
    let answers = in_order(vec![
        writer.enqueue_command("alice01", room, "m0", Some("dead.1"), None),
        writer.enqueue_command("alice01", room, "next", Some("live.1"), None),
    ])
    .await;
    let mut answered = Vec::new();
    for a in answers {
        answered.push(a.unwrap().await.unwrap());
    }
    assert_eq!(answered[0], ids[0]);
    assert!(answered[1] > ids[0]);
    assert_eq!(broadcast_texts(&mut link).await, ["m0", "next"]);
    wait_until("the orphan row to be deleted", || async {
        outbox_len(&app).await == 0
    })
    .await;
}
on_both!(a_redelivered_send_publishes_what_its_dead_writer_left_first);
