"""The languages wordfreq ships: code -> (name, family, script), plus the branch.

`family` is the top-level language family, `branch` the sub-family (both Glottolog-style
English names); `script` is the ISO 15924 code of the script wordfreq's list is written in
(checked against the lists: e.g. wordfreq's `sh` Serbo-Croatian list is Latin-script, its `ja`
list mixes kana and kanji, hence `Jpan`). Used by the wordlang source to pick held-out
languages, and by the memory bank and evaluation to group tasks.
"""

from __future__ import annotations

from typing import NamedTuple


class Language(NamedTuple):
    name: str
    family: str
    script: str


LANGUAGES: dict[str, Language] = {
    "ar": Language("Arabic", "Afro-Asiatic", "Arab"),
    "bg": Language("Bulgarian", "Indo-European", "Cyrl"),
    "bn": Language("Bengali", "Indo-European", "Beng"),
    "ca": Language("Catalan", "Indo-European", "Latn"),
    "cs": Language("Czech", "Indo-European", "Latn"),
    "da": Language("Danish", "Indo-European", "Latn"),
    "de": Language("German", "Indo-European", "Latn"),
    "el": Language("Greek", "Indo-European", "Grek"),
    "en": Language("English", "Indo-European", "Latn"),
    "es": Language("Spanish", "Indo-European", "Latn"),
    "fa": Language("Persian", "Indo-European", "Arab"),
    "fi": Language("Finnish", "Uralic", "Latn"),
    "fil": Language("Filipino", "Austronesian", "Latn"),
    "fr": Language("French", "Indo-European", "Latn"),
    "he": Language("Hebrew", "Afro-Asiatic", "Hebr"),
    "hi": Language("Hindi", "Indo-European", "Deva"),
    "hu": Language("Hungarian", "Uralic", "Latn"),
    "id": Language("Indonesian", "Austronesian", "Latn"),
    "is": Language("Icelandic", "Indo-European", "Latn"),
    "it": Language("Italian", "Indo-European", "Latn"),
    "ja": Language("Japanese", "Japonic", "Jpan"),
    "ko": Language("Korean", "Koreanic", "Hang"),
    "lt": Language("Lithuanian", "Indo-European", "Latn"),
    "lv": Language("Latvian", "Indo-European", "Latn"),
    "mk": Language("Macedonian", "Indo-European", "Cyrl"),
    "ms": Language("Malay", "Austronesian", "Latn"),
    "nb": Language("Norwegian Bokmål", "Indo-European", "Latn"),
    "nl": Language("Dutch", "Indo-European", "Latn"),
    "pl": Language("Polish", "Indo-European", "Latn"),
    "pt": Language("Portuguese", "Indo-European", "Latn"),
    "ro": Language("Romanian", "Indo-European", "Latn"),
    "ru": Language("Russian", "Indo-European", "Cyrl"),
    "sh": Language("Serbo-Croatian", "Indo-European", "Latn"),
    "sk": Language("Slovak", "Indo-European", "Latn"),
    "sl": Language("Slovenian", "Indo-European", "Latn"),
    "sv": Language("Swedish", "Indo-European", "Latn"),
    "ta": Language("Tamil", "Dravidian", "Taml"),
    "tr": Language("Turkish", "Turkic", "Latn"),
    "uk": Language("Ukrainian", "Indo-European", "Cyrl"),
    "ur": Language("Urdu", "Indo-European", "Arab"),
    "vi": Language("Vietnamese", "Austroasiatic", "Latn"),
    "zh": Language("Chinese", "Sino-Tibetan", "Hani"),
}

# Sub-family, where the family is large enough for it to matter.
BRANCH: dict[str, str] = {
    "ar": "Semitic",
    "he": "Semitic",
    "bg": "Slavic",
    "cs": "Slavic",
    "mk": "Slavic",
    "pl": "Slavic",
    "ru": "Slavic",
    "sh": "Slavic",
    "sk": "Slavic",
    "sl": "Slavic",
    "uk": "Slavic",
    "bn": "Indo-Aryan",
    "hi": "Indo-Aryan",
    "ur": "Indo-Aryan",
    "ca": "Romance",
    "es": "Romance",
    "fr": "Romance",
    "it": "Romance",
    "pt": "Romance",
    "ro": "Romance",
    "da": "Germanic",
    "de": "Germanic",
    "en": "Germanic",
    "is": "Germanic",
    "nb": "Germanic",
    "nl": "Germanic",
    "sv": "Germanic",
    "el": "Hellenic",
    "fa": "Iranian",
    "lt": "Baltic",
    "lv": "Baltic",
    "fi": "Finnic",
    "hu": "Ugric",
    "fil": "Malayo-Polynesian",
    "id": "Malayo-Polynesian",
    "ms": "Malayo-Polynesian",
    "ja": "Japonic",
    "ko": "Koreanic",
    "ta": "Dravidian",
    "tr": "Turkic",
    "vi": "Vietic",
    "zh": "Sinitic",
}


def describe(code: str) -> Language:
    """The row for `code`; unknown codes get ('code', 'unknown', 'Zyyy')."""
    return LANGUAGES.get(code, Language(code, "unknown", "Zyyy"))
