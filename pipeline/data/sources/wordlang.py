"""Multilingual word lists from `wordfreq` (shipped with the package; nothing is downloaded).

One language = one task; each row is one of the language's top-N words with its frequency
(`text`, `freq`). wordfreq answers an unknown code with its nearest match (often English)
without complaint, so every code is checked against `wordfreq.available_languages()` first.

Frequencies come straight from wordfreq's ranked lists (bucket `i` holds words of frequency
10^(-i/100)), which needs no tokenizer, so Japanese, Korean and Chinese work without MeCab or
jieba. The default held-out languages give val and test both languages whose script occurs in
training (nl, uk; fa, pt) and languages whose script does not (el, he; ko, ta).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from importlib import metadata

import numpy as np
import pyarrow as pa

from pipeline.data.sources import Prepared, SourceTask
from pipeline.data.sources.languages import BRANCH, LANGUAGES, describe
from pipeline.errors import ShardError

FAMILY = "wordlang"
DEFAULT_TOP_N = 1000
DEFAULT_VAL = ("el", "he", "nl", "uk")
DEFAULT_TEST = ("fa", "ko", "pt", "ta")


def available() -> list[str]:
    import wordfreq

    return sorted(wordfreq.available_languages())


def _unknown(code: str, known: list[str]) -> ShardError:
    by_name = {lang.name.lower(): c for c, lang in LANGUAGES.items() if c in known}
    guess = None
    low = str(code).lower()
    if low in by_name:
        guess = by_name[low]
    elif low.split("-")[0].split("_")[0] in known:
        guess = low.split("-")[0].split("_")[0]
    else:
        near = difflib.get_close_matches(low, known + list(by_name), n=1, cutoff=0.6)
        if near:
            guess = by_name.get(near[0], near[0])
    hint = f"did you mean '{guess}' ({describe(guess).name})? " if guess else ""
    return ShardError(
        f"wordlang: unknown wordfreq language {code!r} (wordfreq would silently substitute "
        f"another language, often English): {hint}use one of: {', '.join(known)}"
    )


def _codes(value: str | Sequence[str] | None) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [v for v in value.split(",")]
    return [v.strip() for v in value if v.strip()]


def top_words(lang: str, n: int) -> tuple[list[str], np.ndarray]:
    """The `n` most frequent words of `lang` and their frequencies (descending)."""
    import wordfreq

    words: list[str] = []
    freqs: list[float] = []
    for i, bucket in enumerate(wordfreq.get_frequency_list(lang)):
        for w in bucket:
            words.append(w)
            freqs.append(10.0 ** (-i / 100.0))
            if len(words) == n:
                return words, np.asarray(freqs, dtype=np.float32)
    return words, np.asarray(freqs, dtype=np.float32)


def _tasks(
    splits: dict[str, list[str]], top_n: int, train_scripts: set[str]
) -> Iterator[SourceTask]:
    for split, codes in splits.items():
        for code in codes:
            words, freqs = top_words(code, top_n)
            lang = describe(code)
            meta = {
                "name": lang.name,
                "family": lang.family,
                "branch": BRANCH.get(code, lang.family),
                "script": lang.script,
                "script_in_train": lang.script in train_scripts,
            }
            table = pa.table(
                {"text": pa.array(words, pa.string()), "freq": pa.array(freqs, pa.float32())}
            )
            yield SourceTask(code, split, table, meta)


def _held_out(
    split: str,
    given: str | Sequence[str] | None,
    default: Sequence[str],
    chosen: list[str],
    known: list[str],
) -> list[str]:
    """The val or test languages: as given (each known and among --languages), else the
    defaults that are among --languages; never none."""
    codes = _codes(given)
    if codes is None:
        codes = [c for c in default if c in chosen]
    for code in codes:
        if code not in known:
            raise _unknown(code, known)
        if code not in chosen:
            raise ShardError(
                f"wordlang: --{split}-languages names {code!r}, which is not in "
                "--languages: add it there or drop it here"
            )
    if not codes:
        raise ShardError(
            f"wordlang: the split leaves no {split} tasks (none of the default {split} "
            f"languages {', '.join(default)} is among --languages): pass "
            f"--{split}-languages with at least one of {', '.join(sorted(chosen))}"
        )
    return sorted(set(codes))


def prepare(
    *,
    languages: str | Sequence[str] | None = None,
    top_n: int = DEFAULT_TOP_N,
    val_languages: str | Sequence[str] | None = None,
    test_languages: str | Sequence[str] | None = None,
    seed: int = 0,
) -> Prepared:
    """Validate the options (codes, held-out sets, top-N) and plan the tasks."""
    known = available()
    chosen = _codes(languages) or list(known)
    for code in chosen:
        if code not in known:
            raise _unknown(code, known)
    if len(set(chosen)) != len(chosen):
        dup = sorted({c for c in chosen if chosen.count(c) > 1})
        raise ShardError(f"wordlang: --languages lists {dup} more than once")
    if not isinstance(top_n, int) or top_n < 1:
        raise ShardError(f"wordlang: --top-n={top_n} must be at least 1 (e.g. --top-n 1000)")

    held = {
        "val": _held_out("val", val_languages, DEFAULT_VAL, chosen, known),
        "test": _held_out("test", test_languages, DEFAULT_TEST, chosen, known),
    }
    both = set(held["val"]) & set(held["test"])
    if both:
        raise ShardError(
            f"wordlang: {sorted(both)} are both val and test languages: a task belongs to one "
            "split; change --val-languages or --test-languages"
        )
    train = sorted(set(chosen) - set(held["val"]) - set(held["test"]))
    if not train:
        raise ShardError(
            "wordlang: the split leaves no train tasks: every language is held out; "
            "add languages to --languages or hold out fewer"
        )
    splits = {"train": train, "val": held["val"], "test": held["test"]}
    train_scripts = {describe(c).script for c in train}
    params = {
        "languages": sorted(chosen),
        "top_n": top_n,
        "val_languages": held["val"],
        "test_languages": held["test"],
        "seed": seed,
    }
    build = {
        "source": "wordfreq",
        "params": params,
        "seed": seed,
        "versions": {"wordfreq": metadata.version("wordfreq")},
    }
    hint = "pass --val-languages / --test-languages"
    return Prepared(FAMILY, _tasks(splits, top_n, train_scripts), build, hint)
