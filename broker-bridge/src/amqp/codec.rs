//! How envelopes and application commands travel as AMQP messages.
//!
//! The body is the AMQP payload, byte for byte. Everything else goes into the message's header
//! table, as long strings (so no 255-byte limit and no character set issue):
//!
//! | header | envelope (node deliveries) | command (work queue) |
//! |---|---|---|
//! | `k` | `topic` or `user` | `cmd` |
//! | `t` | topic name (kind `topic`) | – |
//! | `u`, `q` | user and user-queue name (kind `user`) | – |
//! | `d` | destination | destination |
//! | `ct` | content type, if any | – |
//! | `h` | extra headers: an array of `[name, value]` arrays, in order (duplicates kept) | the passed-on frame headers, same form |
//! | `p`, `s`, `n` | – | principal, session id, node id |

use std::sync::Arc;

use bytes::Bytes;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};

use crate::model::{AppCommand, Delivery, Envelope, NodeId, Target};

fn long(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

fn pairs(headers: &[(String, String)]) -> AMQPValue {
    let items: Vec<AMQPValue> = headers
        .iter()
        .map(|(k, v)| AMQPValue::FieldArray(FieldArray::from(vec![long(k), long(v)])))
        .collect();
    AMQPValue::FieldArray(FieldArray::from(items))
}

fn put(table: &mut FieldTable, key: &str, value: AMQPValue) {
    table.insert(ShortString::from(key), value);
}

/// Why an AMQP message could not be read back.
#[derive(Debug)]
pub(crate) struct DecodeError(pub(crate) &'static str);

fn text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn get(table: &FieldTable, key: &'static str) -> Result<String, DecodeError> {
    table
        .inner()
        .get(key)
        .and_then(text)
        .ok_or(DecodeError(key))
}

fn get_pairs(table: &FieldTable) -> Result<Vec<(String, String)>, DecodeError> {
    let Some(value) = table.inner().get("h") else {
        return Ok(Vec::new());
    };
    let AMQPValue::FieldArray(items) = value else {
        return Err(DecodeError("h"));
    };
    items
        .as_slice()
        .iter()
        .map(|item| match item {
            AMQPValue::FieldArray(pair) => match pair.as_slice() {
                [k, v] => Some((text(k)?, text(v)?)),
                _ => None,
            },
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .ok_or(DecodeError("h"))
}

/// Headers of a node delivery.
pub(crate) fn envelope_headers(target: &Target, envelope: &Envelope) -> FieldTable {
    let mut table = FieldTable::default();
    match target {
        Target::Topic(topic) => {
            put(&mut table, "k", long("topic"));
            put(&mut table, "t", long(topic));
        }
        Target::User { user, queue } => {
            put(&mut table, "k", long("user"));
            put(&mut table, "u", long(user));
            put(&mut table, "q", long(queue));
        }
    }
    put(&mut table, "d", long(&envelope.destination));
    if let Some(ct) = &envelope.content_type {
        put(&mut table, "ct", long(ct));
    }
    if !envelope.headers.is_empty() {
        put(&mut table, "h", pairs(&envelope.headers));
    }
    table
}

/// Reads a node delivery back.
pub(crate) fn decode_delivery(
    properties: &BasicProperties,
    body: Vec<u8>,
) -> Result<Delivery, DecodeError> {
    let table = properties
        .headers()
        .as_ref()
        .ok_or(DecodeError("headers"))?;
    let target = match get(table, "k")?.as_str() {
        "topic" => Target::Topic(get(table, "t")?),
        "user" => Target::User {
            user: get(table, "u")?,
            queue: get(table, "q")?,
        },
        _ => return Err(DecodeError("k")),
    };
    let content_type = match table.inner().get("ct") {
        Some(v) => Some(text(v).ok_or(DecodeError("ct"))?),
        None => None,
    };
    let envelope = Envelope {
        destination: get(table, "d")?,
        content_type,
        headers: get_pairs(table)?,
        body: Bytes::from(body),
    };
    Ok(Delivery {
        target,
        envelope: Arc::new(envelope),
    })
}

/// Headers of an application command.
pub(crate) fn command_headers(cmd: &AppCommand) -> FieldTable {
    let mut table = FieldTable::default();
    put(&mut table, "k", long("cmd"));
    put(&mut table, "d", long(&cmd.destination));
    put(&mut table, "p", long(&cmd.principal));
    put(&mut table, "s", long(&cmd.session));
    put(&mut table, "n", long(&cmd.node));
    if !cmd.headers.is_empty() {
        put(&mut table, "h", pairs(&cmd.headers));
    }
    table
}

/// Reads an application command back.
pub(crate) fn decode_command(
    properties: &BasicProperties,
    body: Vec<u8>,
) -> Result<AppCommand, DecodeError> {
    let table = properties
        .headers()
        .as_ref()
        .ok_or(DecodeError("headers"))?;
    if get(table, "k")? != "cmd" {
        return Err(DecodeError("k"));
    }
    Ok(AppCommand {
        destination: get(table, "d")?,
        principal: get(table, "p")?,
        session: get(table, "s")?,
        node: NodeId::from(get(table, "n")?),
        headers: get_pairs(table)?,
        body: Bytes::from(body),
    })
}

/// FNV-1a: a hash that is the same in every process and every build, for choosing a work shard.
pub(crate) fn stable_hash(text: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn envelope_round_trips_exactly() {
        let envelope = Envelope {
            destination: format!("/topic/{}", "x".repeat(300)),
            content_type: Some("application/json; charset=utf-8".into()),
            headers: vec![
                ("x-a".into(), "1".into()),
                ("x-b".into(), "two:\nlines".into()),
                ("x-a".into(), "again".into()),
                ("é".into(), String::new()),
            ],
            body: Bytes::from_static(b"\0binary\xff"),
        };
        for target in [Target::topic("chat.5"), Target::user("alice", "notify")] {
            let props =
                BasicProperties::default().with_headers(envelope_headers(&target, &envelope));
            let back = decode_delivery(&props, envelope.body.to_vec()).unwrap();
            assert_eq!(back.target, target);
            assert_eq!(*back.envelope, envelope);
        }
        let bare = Envelope::new("/topic/t", "");
        let props =
            BasicProperties::default().with_headers(envelope_headers(&Target::topic("t"), &bare));
        assert_eq!(*decode_delivery(&props, Vec::new()).unwrap().envelope, bare);
    }

    #[test]
    fn command_round_trips_exactly() {
        let cmd = AppCommand {
            destination: "/app/send".into(),
            principal: "alice".into(),
            session: "gw-1-abc".into(),
            node: NodeId::from("gw-1"),
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("x".into(), "1".into()),
            ],
            body: Bytes::from_static(b"{\"roomId\":5}"),
        };
        let props = BasicProperties::default().with_headers(command_headers(&cmd));
        assert_eq!(decode_command(&props, cmd.body.to_vec()).unwrap(), cmd);
        assert!(decode_delivery(&props, Vec::new()).is_err());
        assert!(decode_command(&BasicProperties::default(), Vec::new()).is_err());
    }

    #[test]
    fn stable_hash_is_fnv1a() {
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
