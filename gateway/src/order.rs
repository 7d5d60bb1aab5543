//! The order key of an application command: what the bus groups a command with so that one
//! process handles the group's commands ([`broker_bridge::ORDER_KEY_HEADER`]).
//!
//! For chat the group is the room: a SEND to `/app/**` whose JSON body has the configured field
//! (`chatRoomId` by default, [`crate::GatewayConfig::command_order_field`]) as a number or a
//! string is keyed `"<field>:<value>"`. With two `instar social` processes, commands keyed by
//! session put two senders of one room on two processes, whose commits the room's row lock orders
//! but whose broadcasts could then leave in either order; keyed by room, one process writes and
//! publishes the room's messages, in message-id order.
//!
//! The body is scanned, not built: the top-level object's other values are skipped without being
//! kept ([`serde::de::IgnoredAny`]), and the body is already bounded by the frame size limit.
//! A body that is not JSON, or has no such field, or an unusable value (an object, an array, a
//! string longer than [`MAX_KEY_CHARS`]) gets no key: the command is placed by its session, and
//! the handler answers it as it would have.

use std::fmt;

use serde::Deserializer as _;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};

/// The body field keyed on by default (the room of `/app/send` and `/app/update/read`).
pub const DEFAULT_FIELD: &str = "chatRoomId";

/// Longest string value used as a key; a longer one gives no key.
pub const MAX_KEY_CHARS: usize = 64;

/// The order key of a command body: `"<field>:<value>"` when `body` is a JSON object whose
/// top-level `field` is a number or a short string; `None` otherwise (or when `field` is empty).
pub fn order_key(field: &str, body: &[u8]) -> Option<String> {
    if field.is_empty() {
        return None;
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = de.deserialize_map(FieldFinder { field }).ok()??;
    Some(format!("{field}:{value}"))
}

/// Visits the top-level object, keeping only `field`'s value.
struct FieldFinder<'f> {
    field: &'f str,
}

impl<'de> Visitor<'de> for FieldFinder<'_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            // The last occurrence, as the handler's JSON parser keeps it.
            if key == self.field {
                found = map.next_value_seed(Scalar)?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// A number or a short string as text; anything else as `None` (skipped whole).
struct Scalar;

impl<'de> DeserializeSeed<'de> for Scalar {
    type Value = Option<String>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Scalar {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number or a string")
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        // The frontend sends ids as numbers; 7.0 is room 7, as the handler reads it.
        if v.fract() == 0.0 && v.abs() < 9.0e15 {
            Ok(Some(format!("{}", v as i64)))
        } else {
            Ok(None)
        }
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        let v = v.trim();
        if v.is_empty() || v.chars().count() > MAX_KEY_CHARS {
            return Ok(None);
        }
        // "7" and 7 are one room to the handler, so one key.
        Ok(Some(
            v.parse::<i64>()
                .map_or_else(|_| v.to_owned(), |n| n.to_string()),
        ))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_number_or_string_is_the_key() {
        let k = |b: &str| order_key(DEFAULT_FIELD, b.as_bytes());
        assert_eq!(
            k(r#"{"chatRoomId":7,"message":"hi"}"#),
            Some("chatRoomId:7".into())
        );
        assert_eq!(
            k(r#"{"message":"x","chatRoomId":"7"}"#),
            Some("chatRoomId:7".into())
        );
        assert_eq!(k(r#"{"chatRoomId":7.0}"#), Some("chatRoomId:7".into()));
        assert_eq!(
            k(r#" {"chatRoomId": " 12 "} "#),
            Some("chatRoomId:12".into())
        );
        assert_eq!(k(r#"{"chatRoomId":"abc"}"#), Some("chatRoomId:abc".into()));
        // Nested objects before the field are skipped, not mistaken for it.
        assert_eq!(
            k(r#"{"a":{"chatRoomId":1},"b":[1,{"chatRoomId":2}],"chatRoomId":3}"#),
            Some("chatRoomId:3".into())
        );
        // The last occurrence, the one the handler reads.
        assert_eq!(
            k(r#"{"chatRoomId":3,"chatRoomId":4}"#),
            Some("chatRoomId:4".into())
        );
    }

    #[test]
    fn no_key_without_a_usable_field() {
        let k = |b: &[u8]| order_key(DEFAULT_FIELD, b);
        for body in [
            &b""[..],
            b"not json",
            b"[1,2]",
            b"7",
            br#"{"message":"hi"}"#,
            br#"{"chatRoomId":null}"#,
            br#"{"chatRoomId":true}"#,
            br#"{"chatRoomId":{"id":1}}"#,
            br#"{"chatRoomId":[1]}"#,
            br#"{"chatRoomId":""}"#,
            br#"{"chatRoomId":1.5}"#,
            br#"{"chatRoomId":1"#,
            b"\xff\xfe",
        ] {
            assert_eq!(k(body), None, "{}", String::from_utf8_lossy(body));
        }
        let long = format!(r#"{{"chatRoomId":"{}"}}"#, "x".repeat(MAX_KEY_CHARS + 1));
        assert_eq!(k(long.as_bytes()), None);
        assert_eq!(order_key("", br#"{"chatRoomId":1}"#), None);
    }

    proptest::proptest! {
        /// Any bytes: no panic, and a key only for a body the handler's JSON parser reads too,
        /// naming the value it reads there.
        #[test]
        fn any_body_gives_the_handlers_room_or_no_key(body in proptest::collection::vec(proptest::num::u8::ANY, 0..96)) {
            let key = order_key(DEFAULT_FIELD, &body);
            if let Some(key) = key {
                let v: serde_json::Value = serde_json::from_slice(&body).expect("a keyed body is JSON");
                let room = &v[DEFAULT_FIELD];
                let text = match room {
                    serde_json::Value::String(s) => s.trim().to_owned(),
                    other => other.to_string(),
                };
                proptest::prop_assert!(key.starts_with("chatRoomId:"));
                let value = &key["chatRoomId:".len()..];
                proptest::prop_assert!(value == text || value.parse::<f64>().ok() == text.parse::<f64>().ok());
            }
        }

        /// Objects with the room among other fields, in any order: always that room.
        #[test]
        fn the_room_is_found_among_other_fields(room in 0i64..i64::MAX, before in 0usize..4, after in 0usize..4) {
            let mut fields: Vec<String> = (0..before).map(|i| format!(r#""a{i}":{{"chatRoomId":{i},"x":[1,"2",null]}}"#)).collect();
            fields.push(format!(r#""chatRoomId":{room}"#));
            fields.extend((0..after).map(|i| format!(r#""b{i}":"chatRoomId""#)));
            let body = format!("{{{}}}", fields.join(","));
            proptest::prop_assert_eq!(order_key(DEFAULT_FIELD, body.as_bytes()), Some(format!("chatRoomId:{room}")));
        }
    }

    #[test]
    fn another_field_can_be_chosen() {
        assert_eq!(
            order_key("room", br#"{"chatRoomId":1,"room":"x"}"#),
            Some("room:x".into())
        );
    }
}
