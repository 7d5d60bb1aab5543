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
//!
//! **Batches.** Publishes to one route that wait at the same moment travel as one AMQP message
//! (`k` = `batch`, `n` = the number of items) whose body is the items one after the other, each
//! in a length-prefixed binary form ([`BatchItem`]): a kind byte (0 topic envelope, 1 user
//! envelope, 2 command), then the same fields as the headers above, each a big-endian `u32`
//! length and the bytes (content type: a presence byte first; extra headers: a `u32` count of
//! pairs first), and last the body. A reader checks every length against what is left, so a
//! damaged batch is refused whole, never misread.

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

/// Largest number of items in one batch message.
pub(crate) const MAX_BATCH_ITEMS: usize = 256;
/// A batch stops growing once its body is this large (one item may be larger on its own).
pub(crate) const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// One item of a batch message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BatchItem {
    /// A node delivery.
    Envelope(Target, Envelope),
    /// An application command.
    Command(AppCommand),
}

impl BatchItem {
    /// Bytes the item takes in a batch body (exact).
    pub(crate) fn encoded_len(&self) -> usize {
        let s = |t: &str| 4 + t.len();
        let pairs = |h: &[(String, String)]| 4 + h.iter().map(|(k, v)| s(k) + s(v)).sum::<usize>();
        1 + match self {
            BatchItem::Envelope(target, e) => {
                let t = match target {
                    Target::Topic(topic) => s(topic),
                    Target::User { user, queue } => s(user) + s(queue),
                };
                t + s(&e.destination)
                    + 1
                    + e.content_type.as_deref().map_or(0, s)
                    + pairs(&e.headers)
                    + 4
                    + e.body.len()
            }
            BatchItem::Command(c) => {
                s(&c.destination)
                    + s(&c.principal)
                    + s(&c.session)
                    + s(&c.node)
                    + pairs(&c.headers)
                    + 4
                    + c.body.len()
            }
        }
    }

    /// The item's single-message form: headers and body (what a batch of one is sent as).
    pub(crate) fn single(&self) -> (FieldTable, &[u8]) {
        match self {
            BatchItem::Envelope(target, e) => (envelope_headers(target, e), &e.body),
            BatchItem::Command(c) => (command_headers(c), &c.body),
        }
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Lengths are bounded far below 4 GiB by the frame and batch limits.
    out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(b);
}

fn put_pairs(out: &mut Vec<u8>, headers: &[(String, String)]) {
    out.extend_from_slice(
        &u32::try_from(headers.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    for (k, v) in headers {
        put_bytes(out, k.as_bytes());
        put_bytes(out, v.as_bytes());
    }
}

/// The headers of a batch message of `n` items.
pub(crate) fn batch_headers(n: usize) -> FieldTable {
    let mut table = FieldTable::default();
    put(&mut table, "k", long("batch"));
    put(&mut table, "n", long(&n.to_string()));
    table
}

/// Appends `item` to a batch body.
pub(crate) fn encode_item(out: &mut Vec<u8>, item: &BatchItem) {
    match item {
        BatchItem::Envelope(target, e) => {
            match target {
                Target::Topic(topic) => {
                    out.push(0);
                    put_bytes(out, topic.as_bytes());
                }
                Target::User { user, queue } => {
                    out.push(1);
                    put_bytes(out, user.as_bytes());
                    put_bytes(out, queue.as_bytes());
                }
            }
            put_bytes(out, e.destination.as_bytes());
            match &e.content_type {
                Some(ct) => {
                    out.push(1);
                    put_bytes(out, ct.as_bytes());
                }
                None => out.push(0),
            }
            put_pairs(out, &e.headers);
            put_bytes(out, &e.body);
        }
        BatchItem::Command(c) => {
            out.push(2);
            for field in [&c.destination, &c.principal, &c.session] {
                put_bytes(out, field.as_bytes());
            }
            put_bytes(out, c.node.as_bytes());
            put_pairs(out, &c.headers);
            put_bytes(out, &c.body);
        }
    }
}

/// Reads a batch body back (every item, or an error naming what was damaged).
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError("batch: truncated"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn len(&mut self) -> Result<usize, DecodeError> {
        let b = self.take(4)?;
        let n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        usize::try_from(n).map_err(|_| DecodeError("batch: length"))
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.len()?;
        self.take(n)
    }

    fn text(&mut self) -> Result<String, DecodeError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| DecodeError("batch: utf-8"))
    }

    fn pairs(&mut self) -> Result<Vec<(String, String)>, DecodeError> {
        let n = self.len()?;
        // Each pair takes at least 8 bytes: a count larger than that is damage, not a reason to
        // allocate.
        if n > self.rest.len() / 8 {
            return Err(DecodeError("batch: header count"));
        }
        (0..n).map(|_| Ok((self.text()?, self.text()?))).collect()
    }

    fn item(&mut self) -> Result<BatchItem, DecodeError> {
        let kind = self.byte()?;
        if kind == 2 {
            let destination = self.text()?;
            let principal = self.text()?;
            let session = self.text()?;
            let node = NodeId::from(self.text()?);
            let headers = self.pairs()?;
            let body = Bytes::copy_from_slice(self.bytes()?);
            return Ok(BatchItem::Command(AppCommand {
                destination,
                principal,
                session,
                node,
                headers,
                body,
            }));
        }
        let target = match kind {
            0 => Target::Topic(self.text()?),
            1 => Target::User {
                user: self.text()?,
                queue: self.text()?,
            },
            _ => return Err(DecodeError("batch: kind")),
        };
        let destination = self.text()?;
        let content_type = match self.byte()? {
            0 => None,
            1 => Some(self.text()?),
            _ => return Err(DecodeError("batch: content type")),
        };
        let headers = self.pairs()?;
        let body = Bytes::copy_from_slice(self.bytes()?);
        Ok(BatchItem::Envelope(
            target,
            Envelope {
                destination,
                content_type,
                headers,
                body,
            },
        ))
    }
}

/// The items of a batch message, or `None` when `properties` do not mark one.
pub(crate) fn decode_batch(
    properties: &BasicProperties,
    body: &[u8],
) -> Option<Result<Vec<BatchItem>, DecodeError>> {
    let table = properties.headers().as_ref()?;
    if table.inner().get("k").and_then(text).as_deref() != Some("batch") {
        return None;
    }
    let decode = || {
        let n: usize = get(table, "n")?.parse().map_err(|_| DecodeError("n"))?;
        if n == 0 || n > MAX_BATCH_ITEMS {
            return Err(DecodeError("n"));
        }
        let mut reader = Reader { rest: body };
        let items = (0..n)
            .map(|_| reader.item())
            .collect::<Result<Vec<_>, _>>()?;
        if !reader.rest.is_empty() {
            return Err(DecodeError("batch: trailing bytes"));
        }
        Ok(items)
    };
    Some(decode())
}

/// Node deliveries of one AMQP message: one, or every item of a batch.
pub(crate) fn decode_deliveries(
    properties: &BasicProperties,
    body: Vec<u8>,
) -> Result<Vec<Delivery>, DecodeError> {
    match decode_batch(properties, &body) {
        None => Ok(vec![decode_delivery(properties, body)?]),
        Some(items) => items?
            .into_iter()
            .map(|item| match item {
                BatchItem::Envelope(target, envelope) => Ok(Delivery {
                    target,
                    envelope: Arc::new(envelope),
                }),
                BatchItem::Command(_) => Err(DecodeError("batch: command in a node queue")),
            })
            .collect(),
    }
}

/// Application commands of one AMQP message: one, or every item of a batch.
pub(crate) fn decode_commands(
    properties: &BasicProperties,
    body: Vec<u8>,
) -> Result<Vec<AppCommand>, DecodeError> {
    match decode_batch(properties, &body) {
        None => Ok(vec![decode_command(properties, body)?]),
        Some(items) => items?
            .into_iter()
            .map(|item| match item {
                BatchItem::Command(cmd) => Ok(cmd),
                BatchItem::Envelope(..) => Err(DecodeError("batch: envelope in a work queue")),
            })
            .collect(),
    }
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

    fn sample_items() -> Vec<BatchItem> {
        vec![
            BatchItem::Envelope(
                Target::topic("chat.5"),
                Envelope::new("/topic/chat.5", "hi").with_header("x-a", "1"),
            ),
            BatchItem::Envelope(
                Target::user("alice", "notify"),
                Envelope::new("/user/queue/notify", Bytes::from_static(b"\0\xff"))
                    .with_content_type("application/json"),
            ),
            BatchItem::Envelope(Target::topic("t"), Envelope::new("/topic/t", "")),
        ]
    }

    fn encode(items: &[BatchItem]) -> (BasicProperties, Vec<u8>) {
        let mut body = Vec::new();
        for item in items {
            let before = body.len();
            encode_item(&mut body, item);
            assert_eq!(body.len() - before, item.encoded_len());
        }
        (
            BasicProperties::default().with_headers(batch_headers(items.len())),
            body,
        )
    }

    #[test]
    fn a_batch_of_envelopes_round_trips_in_order() {
        let items = sample_items();
        let (props, body) = encode(&items);
        let back = decode_deliveries(&props, body).unwrap();
        let expect: Vec<(Target, Envelope)> = items
            .into_iter()
            .map(|i| match i {
                BatchItem::Envelope(t, e) => (t, e),
                BatchItem::Command(_) => unreachable!(),
            })
            .collect();
        let got: Vec<(Target, Envelope)> = back
            .into_iter()
            .map(|d| (d.target, (*d.envelope).clone()))
            .collect();
        assert_eq!(got, expect);
    }

    #[test]
    fn a_batch_of_commands_round_trips_and_kinds_are_not_mixed_up() {
        let cmd = |i: u8| AppCommand {
            destination: "/app/send".into(),
            principal: format!("user{i}"),
            session: format!("gw-1-{i}"),
            node: NodeId::from("gw-1"),
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::from(vec![i; usize::from(i)]),
        };
        let items: Vec<BatchItem> = (0..5).map(|i| BatchItem::Command(cmd(i))).collect();
        let (props, body) = encode(&items);
        let back = decode_commands(&props, body.clone()).unwrap();
        assert_eq!(back, (0..5).map(cmd).collect::<Vec<_>>());
        assert!(decode_deliveries(&props, body).is_err());
        let (props, body) = encode(&sample_items());
        assert!(decode_commands(&props, body).is_err());
    }

    #[test]
    fn a_damaged_batch_is_refused_whole() {
        let (props, body) = encode(&sample_items());
        // Every truncation, and trailing bytes.
        for cut in 0..body.len() {
            assert!(
                decode_deliveries(&props, body[..cut].to_vec()).is_err(),
                "cut {cut}"
            );
        }
        let mut longer = body.clone();
        longer.push(0);
        assert!(decode_deliveries(&props, longer).is_err());
        // A count that disagrees with the body, zero, or too large.
        for n in [2, 4, 0, MAX_BATCH_ITEMS + 1] {
            let props = BasicProperties::default().with_headers(batch_headers(n));
            assert!(decode_deliveries(&props, body.clone()).is_err(), "n = {n}");
        }
        // A huge header count is refused without allocating for it.
        let mut evil = vec![0u8];
        put_bytes(&mut evil, b"t");
        put_bytes(&mut evil, b"/topic/t");
        evil.push(0);
        evil.extend_from_slice(&u32::MAX.to_be_bytes());
        let props = BasicProperties::default().with_headers(batch_headers(1));
        assert!(decode_deliveries(&props, evil).is_err());
    }

    #[test]
    fn a_single_message_still_decodes_as_one() {
        let e = Envelope::new("/topic/t", "x");
        let props =
            BasicProperties::default().with_headers(envelope_headers(&Target::topic("t"), &e));
        let back = decode_deliveries(&props, b"x".to_vec()).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(*back[0].envelope, e);
    }

    proptest::proptest! {
        #[test]
        fn any_batch_round_trips(
            items in proptest::collection::vec(
                (
                    proptest::bool::ANY,
                    "[a-z.]{1,12}",
                    proptest::option::of("[ -~]{0,20}"),
                    proptest::collection::vec(("[ -~]{0,8}", "\\PC{0,8}"), 0..4),
                    proptest::collection::vec(proptest::num::u8::ANY, 0..64),
                ),
                1..20,
            )
        ) {
            let items: Vec<BatchItem> = items
                .into_iter()
                .map(|(user, name, ct, headers, body)| {
                    let target = if user { Target::user(name.clone(), "q") } else { Target::topic(name.clone()) };
                    BatchItem::Envelope(target, Envelope {
                        destination: format!("/x/{name}"),
                        content_type: ct,
                        headers,
                        body: Bytes::from(body),
                    })
                })
                .collect();
            let (props, body) = encode(&items);
            let back = decode_deliveries(&props, body).unwrap();
            proptest::prop_assert_eq!(back.len(), items.len());
            for (d, i) in back.iter().zip(&items) {
                let BatchItem::Envelope(t, e) = i else { unreachable!() };
                proptest::prop_assert_eq!(&d.target, t);
                proptest::prop_assert_eq!(&*d.envelope, e);
            }
        }
    }

    #[test]
    fn stable_hash_is_fnv1a() {
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
