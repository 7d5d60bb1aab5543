//! Hand-written JSON for the hottest responses (the feed and post details): the parts that do not
//! change are rendered once and kept in the read cache, and a response is their concatenation.

use std::fmt::Write as _;

/// Appends `s` as a JSON string (quoted and escaped exactly as `serde_json` does).
pub fn push_str(out: &mut String, s: &str) {
    match serde_json::to_string(s) {
        Ok(quoted) => out.push_str(&quoted),
        // Serialising a `&str` cannot fail; keep the output valid regardless.
        Err(_) => out.push_str("\"\""),
    }
}

/// Appends an integer.
pub fn push_i64(out: &mut String, n: i64) {
    let _ = write!(out, "{n}");
}

/// Appends an optional integer (`null` when absent).
pub fn push_opt_i64(out: &mut String, n: Option<i64>) {
    match n {
        Some(n) => push_i64(out, n),
        None => out.push_str("null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_like_serde_json() {
        for s in [
            "",
            "plain",
            "quote \" and \\ slash",
            "line\nbreak\t\u{1}",
            "한국어 #태그",
        ] {
            let mut out = String::new();
            push_str(&mut out, s);
            assert_eq!(
                serde_json::from_str::<String>(&out).ok().as_deref(),
                Some(s)
            );
        }
        let mut out = String::new();
        push_opt_i64(&mut out, None);
        out.push(',');
        push_opt_i64(&mut out, Some(-7));
        assert_eq!(out, "null,-7");
    }
}
