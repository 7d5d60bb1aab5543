//! W3C trace context (`traceparent`) as it travels with a command over the bus: the sending
//! gateway puts one in the command's headers (or passes on the client's own), and the handling
//! process logs its trace id, so the lines one chat message leaves on every process share it.

/// The header name.
pub const TRACEPARENT: &str = "traceparent";

/// A `traceparent` (version 00, sampled) for a trace and a parent span id; both must be non-zero.
pub fn traceparent(trace_id: u128, span_id: u64) -> String {
    format!("00-{trace_id:032x}-{span_id:016x}-01")
}

/// The trace id of a well-formed `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`, ids not all
/// zero), else `None`.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    (parts.next().is_none()
        && hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && nonzero(trace)
        && hex(parent, 16)
        && nonzero(parent)
        && hex(flags, 2))
    .then_some(trace)
}

/// The trace id of the `traceparent` among `headers`, if one is there and well formed.
pub fn trace_id_in(headers: &[(String, String)]) -> Option<&str> {
    headers
        .iter()
        .find(|(k, _)| k == TRACEPARENT)
        .and_then(|(_, v)| trace_id(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_it_makes_and_refuses_the_rest() {
        let tp = traceparent(0x0af7651916cd43dd8448eb211c80319c, 0xb7ad6b7169203331);
        assert_eq!(
            tp,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        assert_eq!(trace_id(&tp), Some("0af7651916cd43dd8448eb211c80319c"));
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",
        ] {
            assert_eq!(trace_id(bad), None, "{bad}");
        }
        let headers = vec![
            ("x".to_owned(), "y".to_owned()),
            (TRACEPARENT.to_owned(), tp.clone()),
        ];
        assert_eq!(
            trace_id_in(&headers),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
    }
}
