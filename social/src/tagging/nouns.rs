//! The last-noun rule of contract §6.2–§6.3: a hashtag or an image label is analysed into
//! morphemes; the tag is the last morpheme whose Sejong tag starts with `N` (NNG, NNP, NNB, NP,
//! NR), else the word unchanged. Latin words are tagged `SL`, so English labels and hashtags come
//! through verbatim. `서울여행` → `여행`, `맛집탐방` → `탐방`, `Golden retriever` unchanged.
//!
//! The analyser sits behind [`Morphology`]; the real one is mecab-ko-dic read by
//! [`super::mecab::Dictionary`] (docs/tagging.md has the evaluation and the differences from the
//! original's Komoran).

use std::path::Path;
use std::sync::Arc;

use super::mecab::{DictError, Dictionary, Morpheme};

/// Words longer than this (in characters) are kept unchanged without analysis: the lattice grows
/// with the length, and a stored tag is at most 100 characters anyway.
pub const MAX_ANALYSED_CHARS: usize = 100;

/// A Korean morphological analyser: the morphemes of `text` with Sejong tags.
pub trait Morphology: Send + Sync + std::fmt::Debug {
    fn morphemes(&self, text: &str) -> Vec<Morpheme>;
}

impl Morphology for Dictionary {
    fn morphemes(&self, text: &str) -> Vec<Morpheme> {
        self.analyse(text)
    }
}

/// The noun rule over one analyser; cheap to clone.
#[derive(Debug, Clone)]
pub struct Nouns {
    analyser: Arc<dyn Morphology>,
}

impl Nouns {
    pub fn new(analyser: Arc<dyn Morphology>) -> Self {
        Self { analyser }
    }

    /// Loads mecab-ko-dic from `dir` (see [`Dictionary::load`]).
    pub fn load(dir: &Path) -> Result<Self, DictError> {
        Ok(Self::new(Arc::new(Dictionary::load(dir)?)))
    }

    /// The tag for one word (§6.2): its last noun, else the word itself (trimmed).
    pub fn last_noun(&self, word: &str) -> String {
        let word = word.trim();
        if word.is_empty() || word.chars().count() > MAX_ANALYSED_CHARS {
            return word.to_owned();
        }
        self.analyser
            .morphemes(word)
            .into_iter()
            .rev()
            .find(|m| m.tag.starts_with('N') && !m.surface.is_empty())
            .map_or_else(|| word.to_owned(), |m| m.surface)
    }

    /// Applies the rule to each word and drops repeats, keeping the first-seen order.
    pub fn normalise_all<'a>(&self, words: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for w in words {
            let tag = self.last_noun(w);
            if !tag.is_empty() && !out.contains(&tag) {
                out.push(tag);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in analyser that splits on `+` and tags each piece `piece/TAG`.
    #[derive(Debug)]
    struct Scripted;

    impl Morphology for Scripted {
        fn morphemes(&self, text: &str) -> Vec<Morpheme> {
            text.split('+')
                .filter_map(|p| {
                    let (s, t) = p.split_once('/')?;
                    Some(Morpheme {
                        surface: s.to_owned(),
                        tag: t.to_owned(),
                    })
                })
                .collect()
        }
    }

    #[test]
    fn last_noun_else_the_word() {
        let nouns = Nouns::new(Arc::new(Scripted));
        assert_eq!(nouns.last_noun("서울/NNP+여행/NNG"), "여행");
        assert_eq!(nouns.last_noun("여행/NNG+가/VV+다/EF"), "여행");
        assert_eq!(
            nouns.last_noun("Golden/SL+retriever/SL"),
            "Golden/SL+retriever/SL"
        );
        assert_eq!(nouns.last_noun("  "), "");
        let long = "가/NNG+".repeat(40);
        assert_eq!(nouns.last_noun(&long), long.trim());
        assert_eq!(
            nouns.normalise_all(["a/NNG", "b/NNP", "x/NNG+a/NNG", "c/SL"]),
            vec!["a", "b", "c/SL"]
        );
    }
}
