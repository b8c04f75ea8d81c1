"""Data side of `bench/fewshot.py`: leave-languages-out folds over every wordfreq language,
word lists, seeded episodes, and the no-learning references (uniform, support n-gram).

Every language's top-N list is split by rank parity: even ranks ("A") and odd ranks ("B").
A training language contributes all its words; a test language is evaluated on episodes
drawn from its B words only, and its oracle is trained on its A words (the rest of its
list), so the oracle never sees an evaluation word.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.data import episodes as ep
from pipeline.data.sources.languages import LANGUAGES
from pipeline.data.sources.wordlang import available, top_words
from pipeline.eval.methods import Episode

UNIFORM_BPB = math.log2(ep.VOCAB)  # 8.017: a uniform guess over the 259 symbols


@dataclass(frozen=True)
class Fold:
    index: int
    test: tuple[str, ...]
    val: tuple[str, ...]
    train: tuple[str, ...]

    def seen_script(self, lang: str) -> bool:
        """Does `lang`'s script occur among this fold's TRAINING languages?"""
        return LANGUAGES[lang].script in {LANGUAGES[t].script for t in self.train}


def make_folds(langs: Sequence[str], n_folds: int, n_val: int, seed: int) -> list[Fold]:
    """Every language a test language exactly once. Languages are dealt round-robin in an
    order that spreads each script over the folds (so no fold holds all Cyrillic or all
    Arabic-script languages); validation languages come from the fold's training side:
    one of a script found only once among the training languages (like an unseen-script
    test language), the rest from shared scripts."""
    rng = np.random.default_rng(seed)
    by_script: dict[str, list[str]] = {}
    for lang in sorted(langs):
        by_script.setdefault(LANGUAGES[lang].script, []).append(lang)
    order: list[str] = []
    for script in sorted(by_script, key=lambda s: (-len(by_script[s]), s)):
        group = list(by_script[script])
        rng.shuffle(group)
        order += group
    tests: list[list[str]] = [[] for _ in range(n_folds)]
    for i, lang in enumerate(order):
        tests[i % n_folds].append(lang)
    folds = []
    for i, test in enumerate(tests):
        rest = [lang for lang in sorted(langs) if lang not in test]
        count = {s: sum(LANGUAGES[r].script == s for r in rest) for s in by_script}
        lone = [r for r in rest if count[LANGUAGES[r].script] == 1]
        shared = [r for r in rest if count[LANGUAGES[r].script] > 1]
        pick = list(rng.choice(lone, min(1, len(lone)), replace=False)) if lone else []
        pick += list(rng.choice(shared, n_val - len(pick), replace=False))
        val = tuple(sorted(str(p) for p in pick))
        train = tuple(r for r in rest if r not in val)
        folds.append(Fold(i, tuple(sorted(test)), val, train))
    return folds


def load_words(langs: Sequence[str], top_n: int) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """`{lang: {"all": rows, "A": even-rank rows, "B": odd-rank rows}}` (rows = text, freq)."""
    known = set(available())
    missing = sorted(set(langs) - known)
    if missing:
        raise SystemExit(f"wordfreq does not ship {missing}; drop them from --languages")
    out = {}
    for lang in langs:
        words, freqs = top_words(lang, top_n)
        w = np.array(words, dtype=object)
        out[lang] = {
            "all": {"text": w, "freq": freqs},
            "A": {"text": w[0::2], "freq": freqs[0::2]},
            "B": {"text": w[1::2], "freq": freqs[1::2]},
        }
    return out


def episodes_for(
    words,
    langs: Sequence[str],
    data_cfg,
    *,
    part: str,
    shot: int,
    k_query: int,
    n: int,
    seed: int,
    slot: Callable[[str], int] | None = None,
) -> list[Episode]:
    """`n` seeded episodes per language: deterministic in (seed, shot, language, index), so
    every method sees the very same support and query words. `slot`: the language's seed
    slot (default: its index among the wordfreq languages)."""
    cfg = data_cfg.model_copy(update={"k_support": shot, "k_query": k_query})
    out = []
    for lang in langs:
        li = slot(lang) if slot else sorted(LANGUAGES).index(lang)
        for e in range(n):
            rng = ep.slot_rng(seed, shot, li * 100_003 + e)
            batch = ep.make_episode("lm", lambda t: words[t][part], (lang,), cfg, rng)
            out.append(Episode((lang,), batch))
    return out


# ---------------------------------------------------------------- support n-gram reference
def ngram_bpb(support: ep.Split, query: ep.Split, order: int = 3) -> float:
    """Bits per byte on the query of a Witten-Bell interpolated byte n-gram fit on the
    support words alone (orders 0..order-1 of context, backing off to uniform over the 259
    symbols): what K words give with no learning at all. Same tokens and mask as the models
    (BOS-prefixed inputs, bytes + EOS targets)."""
    counts: list[dict[tuple[int, ...], dict[int, int]]] = [{} for _ in range(order)]
    for xs, ys, ms in zip(support.x, support.y, support.mask, strict=True):
        n = int(ms.sum())
        for t in range(n):
            for k in range(min(order, t + 2)):  # context = the k inputs x[t-k+1..t]
                ctx = tuple(int(c) for c in xs[max(0, t - k + 1) : t + 1]) if k else ()
                row = counts[k].setdefault(ctx, {})
                row[int(ys[t])] = row.get(int(ys[t]), 0) + 1

    def prob(ctx_full: tuple[int, ...], y: int) -> float:
        p = 1.0 / ep.VOCAB
        for k in range(order):
            ctx = ctx_full[len(ctx_full) - k :] if k else ()
            if len(ctx) < k:
                break
            row = counts[k].get(ctx)
            if not row:
                continue
            total, types = sum(row.values()), len(row)
            p = (row.get(y, 0) + types * p) / (total + types)
        return p

    bits, count = 0.0, 0
    for xs, ys, ms in zip(query.x, query.y, query.mask, strict=True):
        n = int(ms.sum())
        for t in range(n):
            ctx = tuple(int(c) for c in xs[max(0, t - order + 2) : t + 1])
            bits -= math.log2(prob(ctx, int(ys[t])))
            count += 1
    return bits / max(count, 1)
