//! An ordered header list that costs two allocations per frame, not two per header.
//!
//! The obvious representation, `Vec<(String, String)>`, allocates twice per header; a 100-byte
//! SEND frame with five headers would spend more time in the allocator than in parsing. Here all
//! names and values are appended to one `String` and each header is three offsets into it.
//! The decoder knows an upper bound for both sizes before it starts (the head's length and its
//! line count), so it allocates exactly once for the text and once for the offsets.
//!
//! Semantics follow the spec: order is preserved, repeated names are all kept, and
//! [`Headers::get`] returns the *first* occurrence ("only the first header entry SHOULD be used").
//! Names are case-sensitive.

use std::fmt;

use crate::error::FrameError;
use crate::escape::{Escaping, unescape_into};

/// Ordered list of `(name, value)` pairs, unescaped.
#[derive(Clone, Default)]
pub struct Headers {
    /// All names and values, back to back.
    text: String,
    /// Where each header lives in `text`.
    spans: Vec<Span>,
}

/// `text[start..mid]` is the name, `text[mid..end]` the value.
#[derive(Clone, Copy, Debug)]
struct Span {
    start: usize,
    mid: usize,
    end: usize,
}

impl Headers {
    /// An empty list (does not allocate).
    pub fn new() -> Self {
        Headers::default()
    }

    /// An empty list with room for `headers` headers totalling `text_bytes` bytes of names and values.
    pub fn with_capacity(headers: usize, text_bytes: usize) -> Self {
        Headers {
            text: String::with_capacity(text_bytes),
            spans: Vec::with_capacity(headers),
        }
    }

    /// Number of headers, repeated ones included.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// No headers at all.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Appends a header (after any existing ones, even with the same name).
    pub fn push(&mut self, name: impl AsRef<str>, value: impl AsRef<str>) {
        let start = self.text.len();
        self.text.push_str(name.as_ref());
        let mid = self.text.len();
        self.text.push_str(value.as_ref());
        let end = self.text.len();
        self.spans.push(Span { start, mid, end });
    }

    /// Appends a header read from the wire, undoing the escaping `esc` on the way in.
    pub(crate) fn push_unescaped(
        &mut self,
        name: &str,
        value: &str,
        esc: Escaping,
    ) -> Result<(), FrameError> {
        let start = self.text.len();
        unescape_into(name, esc, &mut self.text)?;
        let mid = self.text.len();
        unescape_into(value, esc, &mut self.text)?;
        let end = self.text.len();
        self.spans.push(Span { start, mid, end });
        Ok(())
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.iter().filter(move |(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Whether `name` occurs at all.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The headers in order, as `(name, value)`.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            headers: self,
            spans: self.spans.iter(),
        }
    }

    /// Removes every occurrence of `name`; returns the first removed value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        let first = self.get(name).map(str::to_owned);
        if first.is_some() {
            // Rebuild rather than leave holes in `text`: removal is rare, cloning is not.
            let mut kept = Headers::with_capacity(self.len(), self.text.len());
            for (n, v) in self.iter().filter(|(n, _)| *n != name) {
                kept.push(n, v);
            }
            *self = kept;
        }
        first
    }

    /// Replaces every occurrence of `name` by one header with `value`, at the position of the
    /// first occurrence (or at the end if there was none).
    pub fn set(&mut self, name: &str, value: impl AsRef<str>) {
        let value = value.as_ref();
        if !self.contains(name) {
            self.push(name, value);
            return;
        }
        let mut out = Headers::with_capacity(self.len(), self.text.len() + value.len());
        let mut done = false;
        for (n, v) in self.iter() {
            if n != name {
                out.push(n, v);
            } else if !done {
                out.push(n, value);
                done = true;
            }
        }
        *self = out;
    }

    fn pair(&self, span: &Span) -> (&str, &str) {
        // The spans are our own offsets at char boundaries; `get` keeps this panic-free regardless.
        (
            self.text.get(span.start..span.mid).unwrap_or_default(),
            self.text.get(span.mid..span.end).unwrap_or_default(),
        )
    }
}

/// Iterator over `(name, value)` pairs, see [`Headers::iter`].
#[derive(Debug, Clone)]
pub struct Iter<'a> {
    headers: &'a Headers,
    spans: std::slice::Iter<'a, Span>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        self.spans.next().map(|s| self.headers.pair(s))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.spans.size_hint()
    }
}

impl DoubleEndedIterator for Iter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.spans.next_back().map(|s| self.headers.pair(s))
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a Headers {
    type Item = (&'a str, &'a str);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl<N: AsRef<str>, V: AsRef<str>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        let mut h = Headers::new();
        h.extend(iter);
        h
    }
}

impl<N: AsRef<str>, V: AsRef<str>> Extend<(N, V)> for Headers {
    fn extend<I: IntoIterator<Item = (N, V)>>(&mut self, iter: I) {
        for (n, v) in iter {
            self.push(n, v);
        }
    }
}

/// Equal when the same pairs appear in the same order (the internal layout does not matter).
impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Headers {}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Headers {
        [("a", "1"), ("b", "2"), ("a", "3"), ("c", "")]
            .into_iter()
            .collect()
    }

    #[test]
    fn first_wins_and_order_is_kept() {
        let h = sample();
        assert_eq!(h.len(), 4);
        assert_eq!(h.get("a"), Some("1"));
        assert_eq!(h.get("c"), Some(""));
        assert_eq!(h.get("A"), None);
        assert_eq!(h.get_all("a").collect::<Vec<_>>(), ["1", "3"]);
        let names: Vec<_> = h.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["a", "b", "a", "c"]);
        assert_eq!(h.iter().next_back(), Some(("c", "")));
    }

    #[test]
    fn remove_and_set() {
        let mut h = sample();
        assert_eq!(h.remove("a"), Some("1".to_owned()));
        assert_eq!(h.remove("a"), None);
        assert_eq!(h, [("b", "2"), ("c", "")].into_iter().collect());
        h.set("b", "x");
        h.set("d", "y");
        assert_eq!(h, [("b", "x"), ("c", ""), ("d", "y")].into_iter().collect());
        let mut h = sample();
        h.set("a", "z");
        assert_eq!(h, [("a", "z"), ("b", "2"), ("c", "")].into_iter().collect());
    }

    #[test]
    fn equality_ignores_layout() {
        let mut a = sample();
        a.remove("zzz");
        let mut b = Headers::with_capacity(10, 100);
        b.extend([("a", "1"), ("b", "2"), ("a", "3"), ("c", "")]);
        assert_eq!(a, b);
        assert!(Headers::new().is_empty());
        assert_eq!(format!("{:?}", Headers::new()), "[]");
    }
}
