"""Held-out text that the wordfreq lists do not contain, for `bench/fewshot.py --external`.

Issue 11 asks that the recipe hold on users' word lists in languages wordfreq lacks. With no
network, the source is the Unicode CLDR data shipped inside the `babel` package: per locale,
the display names of territories, languages, scripts and currencies plus month and day
names, ~700-1,500 words per language. It is real text in each language, written by CLDR's
translators, and a different distribution from wordfreq's frequency lists (many proper
nouns and loanwords), which is the point: a recipe that only learned wordfreq's lists shows
it here. Every word that occurs in ANY wordfreq language's top-N list is removed, so no
test word was ever a training word.

None of these languages is a wordfreq language. They are never trained on, and nothing is
chosen on them: each method's inner lr is the one its fold chose on the fold's wordfreq
validation languages, or, with `--external-val 1`, on `EXTERNAL_VAL`: ten other CLDR
languages (none a wordfreq or an `EXTERNAL` language, none in a script of an `EXTERNAL`
language that wordfreq lacks), so that the text the CLDR test languages are scored on has
a validation set of its own kind. "Seen script" here means the script of some wordfreq
language.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

# code -> ISO 15924 script code (as in pipeline/data/sources/languages.py); 24 languages:
# Latin and Cyrillic ones near wordfreq languages, isolates (eu), and scripts no wordfreq
# language uses (Armenian, Georgian, Ethiopic, Khmer).
EXTERNAL = {
    "af": "Latn",
    "az": "Latn",
    "cy": "Latn",
    "et": "Latn",
    "eu": "Latn",
    "ga": "Latn",
    "gl": "Latn",
    "hr": "Latn",
    "mt": "Latn",
    "sq": "Latn",
    "sw": "Latn",
    "uz": "Latn",
    "yo": "Latn",
    "zu": "Latn",
    "be": "Cyrl",
    "kk": "Cyrl",
    "mn": "Cyrl",
    "mr": "Deva",
    "ne": "Deva",
    "ps": "Arab",
    "hy": "Armn",
    "ka": "Geor",
    "am": "Ethi",
    "km": "Khmr",
}
# Validation CLDR languages (round 7, declared before it ran): 6 in scripts wordfreq has
# (Breton, Faroese, Hausa, Somali: Latin; Kyrgyz, Tajik: Cyrillic) and 4 in scripts it
# lacks (Gujarati, Lao, Sinhala, Thai), about the test set's mix.
EXTERNAL_VAL = {
    "br": "Latn",
    "fo": "Latn",
    "ha": "Latn",
    "so": "Latn",
    "ky": "Cyrl",
    "tg": "Cyrl",
    "gu": "Gujr",
    "lo": "Laoo",
    "si": "Sinh",
    "th": "Thai",
}
# index offsets for the episode seed slots (wordfreq languages use 0..41)
SLOT_BASE = 1_000
VAL_SLOT_BASE = 2_000
_SPLIT = re.compile(r"[\s,;:()\[\]/.«»\"“”„]+")


def cldr_words(code: str) -> list[str]:
    """The distinct lower-cased words of CLDR's display names for `code`."""
    try:
        from babel import Locale
    except ImportError as e:  # a bench-only dependency: say how to get it
        raise SystemExit(
            "--external needs the babel package (CLDR data): "
            ".venv/bin/pip install -c constraints-cpu.txt -e '.[bench]'"
        ) from e
    loc = Locale.parse(code)
    names: list[str] = []
    for table in (loc.territories, loc.languages, loc.scripts, loc.currencies):
        names += table.values()
    names += loc.months["format"]["wide"].values()
    names += loc.days["format"]["wide"].values()
    words = {w.strip("-'’").lower() for n in names for w in _SPLIT.split(n)}
    return sorted(w for w in words if len(w) >= 2 and not any(c.isdigit() for c in w))


def load_external(
    codes: Iterable[str], exclude: set[str], seed: int = 0
) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """`{code: {"all", "A", "B"}}` like `fewshot_data.load_words`, minus every word in
    `exclude` (the wordfreq lists); the words are shuffled with `seed` (CLDR has no
    frequencies) and split in halves by position, B being the one episodes draw from."""
    out = {}
    for code in codes:
        words = [w for w in cldr_words(code) if w not in exclude]
        order = np.random.default_rng([seed, slot(code)])
        w = np.array(words, dtype=object)[order.permutation(len(words))]
        freq = np.ones(len(w))
        out[code] = {
            "all": {"text": w, "freq": freq},
            "A": {"text": w[0::2], "freq": freq[0::2]},
            "B": {"text": w[1::2], "freq": freq[1::2]},
        }
    return out


def slot(code: str) -> int:
    """The language's index in the episodes' seed slots (see `fewshot_data.episodes_for`)."""
    if code in EXTERNAL_VAL:
        return VAL_SLOT_BASE + sorted(EXTERNAL_VAL).index(code)
    return SLOT_BASE + sorted(EXTERNAL).index(code)


def groups() -> dict[str, set[str]]:
    """Seen script = the script of some wordfreq language."""
    from pipeline.data.sources.languages import LANGUAGES

    known = {lang.script for lang in LANGUAGES.values()}
    seen = {c for c, script in EXTERNAL.items() if script in known}
    return {"seen script": seen, "unseen script": set(EXTERNAL) - seen}
