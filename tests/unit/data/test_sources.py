"""Task sources: wordlang's languages and held-out sets, the text family's inputs and splits."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data.build import write_shard_set
from pipeline.data.shards import clear_cache, open_shard_set
from pipeline.data.sources import text, wordlang
from pipeline.data.sources.languages import BRANCH, LANGUAGES


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


def build(p, out, **kw):
    return write_shard_set(str(out), p.family, p.tasks, build=p.build, **kw)


def test_languages_table_covers_exactly_what_wordfreq_ships():
    assert sorted(LANGUAGES) == wordlang.available()
    assert set(BRANCH) == set(LANGUAGES)
    assert LANGUAGES["ja"].script == "Jpan" and LANGUAGES["ru"].script == "Cyrl"
    name, family, script = LANGUAGES["fa"]
    assert (name, family, script) == ("Persian", "Indo-European", "Arab")


def test_default_held_out_languages_mix_seen_and_unseen_scripts():
    p = wordlang.prepare(top_n=5)  # plans only; lists are read while writing
    params = p.build["params"]
    assert params["languages"] == wordlang.available()
    held = set(params["val_languages"]) | set(params["test_languages"])
    train = [c for c in params["languages"] if c not in held]
    train_scripts = {LANGUAGES[c].script for c in train}
    for split in ("val_languages", "test_languages"):
        scripts = [LANGUAGES[c].script in train_scripts for c in params[split]]
        assert any(scripts) and not all(scripts), (split, params[split])
    assert not set(params["val_languages"]) & set(params["test_languages"])
    assert len(train) >= 30


def test_wordlang_all_scripts_round_trip_as_utf8(tmp_path):
    p = wordlang.prepare(
        languages="en,hi,ar,zh,ta,el", top_n=40, val_languages="ar,el", test_languages="ta"
    )
    build(p, tmp_path / "w")
    ss = open_shard_set(str(tmp_path / "w"))
    for code in ("hi", "zh", "ta"):
        words = list(ss.read_task(code)["text"])
        assert len(words) == 40 and len(set(words)) == 40
        assert all(w.encode("utf-8").decode("utf-8") == w for w in words)
    assert ss.task_meta("ta")["script_in_train"] is False
    assert ss.task_meta("ar")["script_in_train"] is False  # no Arabic-script training language


def _corpus(root, files):
    root.mkdir(parents=True)
    for name, body in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(body if isinstance(body, bytes) else body.encode("utf-8"))
    return root


def test_text_directory_one_task_per_file_one_example_per_line(tmp_path):
    corpus = _corpus(
        tmp_path / "c",
        {
            "poems/fr.txt": "\ufeffbonjour\r\nle monde\n\n",
            "poems/de.txt": "hallo\nwelt\n",
            "code.py": "print(1)\n",
            "notes.txt": "a\nb\nc\n",
            ".hidden.txt": "skip me\n",
        },
    )
    p = text.prepare(str(corpus), val_keys="code", test_keys="notes")
    build(p, tmp_path / "out")
    ss = open_shard_set(str(tmp_path / "out"))
    assert ss.tasks("train") == ["poems/de", "poems/fr"]
    assert ss.tasks("val") == ["code"] and ss.tasks("test") == ["notes"]
    assert list(ss.read_task("poems/fr")["text"]) == ["bonjour", "le monde"]
    assert list(ss.read_task("notes")["text"]) == ["a", "b", "c"]
    assert ss.task_meta("poems/fr")["source"] == "poems/fr.txt"


def test_text_split_by_fraction_is_deterministic_by_seed(tmp_path):
    corpus = _corpus(tmp_path / "c", {f"t{i:02d}.txt": f"line {i}\n" for i in range(20)})

    def splits(seed):
        p = text.prepare(str(corpus), val_fraction=0.2, test_fraction=0.1, seed=seed)
        return text.assign_splits(
            sorted(f"t{i:02d}" for i in range(20)),
            val_fraction=0.2,
            test_fraction=0.1,
            val_keys=None,
            test_keys=None,
            seed=seed,
            where="x",
        ), p

    a, p = splits(0)
    assert splits(0)[0] == a and splits(1)[0] != a
    counts = {s: sum(1 for v in a.values() if v == s) for s in ("train", "val", "test")}
    assert counts == {"train": 14, "val": 4, "test": 2}
    build(p, tmp_path / "out")
    ss = open_shard_set(str(tmp_path / "out"))
    assert {k: "test" for k in ss.tasks("test")} == {k: v for k, v in a.items() if v == "test"}


def test_text_parquet_input_groups_rows_by_task_in_order(tmp_path):
    f = tmp_path / "corpus.parquet"
    pq.write_table(
        pa.table(
            {
                "lang": ["b", "a", "b", "c", "a", "d", "b"],
                "line": ["b1", "a1", "b2", "c1", "a2", "d1", "b3"],
            }
        ),
        f,
    )
    p = text.prepare(str(f), task_column="lang", text_column="line", val_keys="c", test_keys="d")
    build(p, tmp_path / "out")
    ss = open_shard_set(str(tmp_path / "out"))
    assert ss.tasks("train") == ["a", "b"]
    assert list(ss.read_task("b")["text"]) == ["b1", "b2", "b3"]
    assert list(ss.read_task("a")["text"]) == ["a1", "a2"]


def test_changed_text_input_is_rebuilt_not_reported_up_to_date(tmp_path):
    corpus = _corpus(tmp_path / "c", {"a.txt": "1\n", "b.txt": "2\n", "c.txt": "3\n"})
    opts = {"val_keys": "b", "test_keys": "c"}
    assert not build(text.prepare(str(corpus), **opts), tmp_path / "o").skipped
    assert build(text.prepare(str(corpus), **opts), tmp_path / "o").skipped
    (corpus / "a.txt").write_text("1\nmore\n")
    res = build(text.prepare(str(corpus), **opts), tmp_path / "o")
    assert not res.skipped
    assert list(open_shard_set(str(tmp_path / "o")).read_task("a")["text"]) == ["1", "more"]
