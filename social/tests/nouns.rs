//! The noun rule of contract §6.2–§6.3 over the whole parity sample (`tests/data/nouns.tsv`):
//! every word must give exactly the expected tag, which `scripts/tagging/parity.py` computed with
//! mecab-ko's own C++ engine over the same dictionary. The dictionary is the one `scripts/test`
//! installs from PyPI (`python-mecab-ko-dic`) and exports as `INSTAR_MECAB_KO_DIC`.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::OnceLock;

use social::tagging::mecab::{Dictionary, Morpheme};
use social::tagging::nouns::Nouns;

fn dictionary_dir() -> PathBuf {
    let dir = std::env::var_os("INSTAR_MECAB_KO_DIC").expect(
        "INSTAR_MECAB_KO_DIC is not set: run scripts/test once (it installs python-mecab-ko-dic) \
         and source .test-env/env.sh",
    );
    PathBuf::from(dir)
}

fn nouns() -> &'static Nouns {
    static NOUNS: OnceLock<Nouns> = OnceLock::new();
    NOUNS.get_or_init(|| Nouns::load(&dictionary_dir()).unwrap())
}

fn sample() -> Vec<(String, String, String)> {
    let text = include_str!("data/nouns.tsv");
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut cols = l.split('\t').map(str::to_owned);
            let word = cols.next().unwrap();
            let expected = cols.next().expect("expected column");
            let komoran = cols.next().expect("Komoran column");
            (word, expected, komoran)
        })
        .collect()
}

#[test]
fn nouns_parity_sample() {
    let rows = sample();
    assert!(rows.len() >= 300, "the sample has {} rows", rows.len());
    let nouns = nouns();
    let mut wrong = Vec::new();
    let mut komoran_same = 0;
    for (word, expected, komoran) in &rows {
        let got = nouns.last_noun(word);
        if &got != expected {
            wrong.push(format!("{word}: got {got}, expected {expected}"));
        }
        if got == *komoran {
            komoran_same += 1;
        }
    }
    assert!(
        wrong.is_empty(),
        "{} differ:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // The recorded agreement with the original's Komoran (docs/tagging.md): 439 of 486.
    assert!(
        komoran_same * 10 >= rows.len() * 9,
        "Komoran agreement fell to {komoran_same}"
    );
}

#[test]
fn morphemes_and_the_rule_on_known_words() {
    let dict = Dictionary::load(&dictionary_dir()).unwrap();
    let m = |s: &str, t: &str| Morpheme {
        surface: s.to_owned(),
        tag: t.to_owned(),
    };
    assert_eq!(
        dict.analyse("서울여행"),
        vec![m("서울", "NNP"), m("여행", "NNG")]
    );
    // Inflected forms are split into their morphemes, as Komoran reports them.
    assert_eq!(dict.analyse("웃겨"), vec![m("웃기", "VV"), m("어", "EC")]);
    let nouns = nouns();
    assert_eq!(nouns.last_noun("맛집탐방"), "탐방");
    assert_eq!(nouns.last_noun("Golden retriever"), "Golden retriever");
    assert_eq!(nouns.last_noun("🐶강아지"), "강아지");
    assert_eq!(
        nouns.normalise_all(["서울여행", "부산여행", "sea", "ㅋㅋㅋ"]),
        vec!["여행", "sea", "ㅋㅋㅋ"]
    );
}

#[test]
fn a_damaged_dictionary_is_refused() {
    let src = dictionary_dir();
    let dir = std::env::temp_dir().join(format!("instar-dic-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["unk.dic", "matrix.bin", "char.bin", "dicrc"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    // sys.dic cut short: the size in its magic word no longer matches.
    let sys = std::fs::read(src.join("sys.dic")).unwrap();
    std::fs::write(dir.join("sys.dic"), &sys[..sys.len() / 2]).unwrap();
    let err = Dictionary::load(&dir).unwrap_err().to_string();
    assert!(err.contains("sys.dic"), "{err}");
    std::fs::remove_file(dir.join("sys.dic")).unwrap();
    assert!(Dictionary::load(&dir).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}
