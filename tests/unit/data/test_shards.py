"""Shard sets on a local directory: round trips, determinism, splits by task."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.data import manifest as mf
from pipeline.data.build import write_shard_set
from pipeline.data.shards import clear_cache, open_shard_set
from pipeline.data.sources import sinusoid, wordlang
from pipeline.errors import ShardError


def build(prepared, uri, **kw):
    return write_shard_set(
        str(uri),
        prepared.family,
        prepared.tasks,
        build=prepared.build,
        split_hint=prepared.split_hint,
        **kw,
    )


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


def small_sinusoid(seed=0, **kw):
    opts = {"train_tasks": 6, "val_tasks": 3, "test_tasks": 2, "points": 20, "seed": seed}
    return sinusoid.prepare(**{**opts, **kw})


def test_sinusoid_round_trip_values_follow_the_task_parameters(tmp_path):
    build(small_sinusoid(), tmp_path / "s", rows_per_file=50)
    ss = open_shard_set(str(tmp_path / "s"))
    assert ss.family == "sinusoid"
    assert ss.tasks("train") == [f"train-{i:06d}" for i in range(6)]
    assert len(ss.tasks("val")) == 3 and len(ss.tasks("test")) == 2
    assert len(ss.manifest.files) > 3  # several files per split with rows_per_file=50
    for key in ss.tasks("train") + ss.tasks("test"):
        rows = ss.read_task(key)
        meta = ss.task_meta(key)
        assert set(rows) == {"x", "y"}
        assert rows["x"].dtype == np.float32 and rows["y"].dtype == np.float32
        assert rows["x"].shape == (20,)
        assert 0.1 <= meta["amplitude"] <= 5.0 and 0.0 <= meta["phase"] <= np.pi
        assert np.all(np.abs(rows["x"]) <= 5.0)
        expected = meta["amplitude"] * np.sin(rows["x"].astype(np.float64) - meta["phase"])
        np.testing.assert_allclose(rows["y"], expected, atol=1e-5)


def test_rows_are_read_only_views(tmp_path):
    build(small_sinusoid(), tmp_path / "s")
    rows = open_shard_set(str(tmp_path / "s" / "manifest.json")).read_task("train-000000")
    with pytest.raises(ValueError):
        rows["x"][0] = 1.0


def test_sinusoid_is_deterministic_by_seed_and_task_index(tmp_path):
    build(small_sinusoid(seed=3), tmp_path / "a")
    build(small_sinusoid(seed=3, train_tasks=9), tmp_path / "b")
    build(small_sinusoid(seed=4), tmp_path / "c")
    a, b, c = (open_shard_set(str(tmp_path / n)) for n in "abc")
    for key in a.tasks("train") + a.tasks("val"):
        np.testing.assert_array_equal(a.read_task(key)["y"], b.read_task(key)["y"])
        assert not np.array_equal(a.read_task(key)["y"], c.read_task(key)["y"])
    # the same options give byte-identical Parquet files
    build(small_sinusoid(seed=3), tmp_path / "a2")
    a2 = open_shard_set(str(tmp_path / "a2"))
    assert sorted(f.sha256 for f in a.manifest.files.values()) == sorted(
        f.sha256 for f in a2.manifest.files.values()
    )


def test_every_task_is_in_exactly_one_split(tmp_path):
    build(small_sinusoid(), tmp_path / "s")
    ss = open_shard_set(str(tmp_path / "s"))
    splits = [set(ss.tasks(s)) for s in mf.SPLITS]
    assert sum(len(s) for s in splits) == len(ss.manifest.tasks) == 11
    assert not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2])
    for t in ss.manifest.tasks.values():  # a task's rows all live in one file of its split
        assert ss.manifest.files[t.file].split == t.split


def test_manifest_records_rows_checksums_and_build_params(tmp_path):
    build(small_sinusoid(seed=7), tmp_path / "s")
    tree = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert tree["schema_version"] == mf.SCHEMA_VERSION
    assert tree["family"] == "sinusoid"
    assert tree["build"]["params"] == {
        "train": 6,
        "val": 3,
        "test": 2,
        "points": 20,
        "seed": 7,
    }
    assert tree["build"]["seed"] == 7
    assert {"metaray", "pyarrow", "numpy", "python"} <= set(tree["build"]["versions"])
    assert sum(f["rows"] for f in tree["files"]) == 11 * 20
    assert all(len(f["sha256"]) == 64 for f in tree["files"])
    assert all(t["rows"] == 20 for t in tree["tasks"])


def test_wordlang_rows_keep_word_and_frequency(tmp_path):
    p = wordlang.prepare(
        languages="en,de,ru,ja,ko", top_n=25, val_languages="ru,ja", test_languages="ko"
    )
    build(p, tmp_path / "w")
    ss = open_shard_set(str(tmp_path / "w"))
    assert ss.tasks("train") == ["de", "en"]
    assert ss.tasks("val") == ["ja", "ru"] and ss.tasks("test") == ["ko"]
    en = ss.read_task("en")
    assert set(en) == {"text", "freq"}
    assert en["text"].dtype == object and en["freq"].dtype == np.float32
    assert list(en["text"][:3]) == ["the", "to", "and"]
    assert np.all(np.diff(en["freq"]) <= 0) and 0 < en["freq"][0] < 1
    ko = ss.read_task("ko")
    assert len(ko["text"]) == 25 and all("\uac00" <= ko["text"][0][0] <= "\ud7a3" for _ in [0])
    assert ss.task_meta("ko")["script"] == "Hang"
    assert ss.task_meta("ko")["script_in_train"] is False
    assert ss.task_meta("ru")["family"] == "Indo-European"


def test_rebuilding_the_same_set_is_a_no_op_other_params_rebuild_other_families_refused(
    tmp_path,
):
    out = tmp_path / "s"
    first = build(small_sinusoid(), out)
    again = build(small_sinusoid(), out)
    assert again.skipped and again.manifest.build["build_id"] == first.manifest.build["build_id"]
    with pytest.raises(ShardError, match=r"built with other parameters \(points: .*--overwrite"):
        build(small_sinusoid(points=30), out)
    replaced = build(small_sinusoid(points=30), out, overwrite=True)
    assert not replaced.skipped
    ss = open_shard_set(str(out))
    assert ss.rows("train-000000") == 30
    # the old build's files are gone; only the new manifest's files remain
    names = {p.name for p in out.iterdir()}
    assert names == {"manifest.json", *replaced.manifest.files}
    other = wordlang.prepare(languages="en,de,fr", val_languages="de", test_languages="fr", top_n=3)
    with pytest.raises(ShardError, match="already holds a sinusoid shard set.*--overwrite"):
        build(other, out)
    assert open_shard_set(str(out)).family == "sinusoid"
    build(
        wordlang.prepare(languages="en,de,fr", val_languages="de", test_languages="fr", top_n=3),
        out,
        overwrite=True,
    )
    assert open_shard_set(str(out)).family == "wordlang"
