"""Bad input: each case fails with a message that names the file/field/value and the fix."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main as cli
from pipeline.data.build import write_shard_set
from pipeline.data.shards import clear_cache, open_shard_set
from pipeline.data.sources import SourceTask, sinusoid, text, wordlang
from pipeline.errors import EpisodeError, ShardError

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


def build_sin(out: Path, **kw):
    opts = {"train_tasks": 4, "val_tasks": 2, "test_tasks": 2, "points": 10, **kw}
    p = sinusoid.prepare(**opts)
    return write_shard_set(str(out), p.family, p.tasks, build=p.build, split_hint=p.split_hint)


def first_file(out: Path, split: str = "train") -> Path:
    return next(out.glob(f"{split}-*.parquet"))


def edit_manifest(out: Path, fn) -> None:
    path = out / "manifest.json"
    tree = json.loads(path.read_text())
    fn(tree)
    path.write_text(json.dumps(tree))


def resign(out: Path, f: Path) -> None:
    """Make the manifest agree with a file's current bytes (as a broken writer would)."""
    data = f.read_bytes()

    def fix(tree):
        for e in tree["files"]:
            if e["name"] == f.name:
                e["sha256"] = hashlib.sha256(data).hexdigest()
                e["bytes"] = len(data)

    edit_manifest(out, fix)


# -- files that changed after the build ---------------------------------------------------------


def test_truncated_parquet_file_is_named_with_sizes_and_fix(tmp_path):
    build_sin(tmp_path / "s")
    f = first_file(tmp_path / "s")
    size = f.stat().st_size
    f.write_bytes(f.read_bytes()[: size // 2])
    ss = open_shard_set(str(tmp_path / "s"))  # opening reads the manifest only
    with pytest.raises(ShardError) as err:
        ss.read_task("train-000000")
    msg = str(err.value)
    assert f.name in msg and "truncated" in msg
    assert f"{size // 2} bytes" in msg and f"says {size}" in msg
    assert "rebuild" in msg and "metaray shards build" in msg


def test_checksum_mismatch_names_file_and_both_digests(tmp_path):
    build_sin(tmp_path / "s")
    f = first_file(tmp_path / "s", "val")
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same length, one flipped byte
    f.write_bytes(bytes(data))
    ss = open_shard_set(str(tmp_path / "s"))
    with pytest.raises(ShardError) as err:
        ss.read_task(ss.tasks("val")[0])
    msg = str(err.value)
    assert f.name in msg and "checksum mismatch" in msg
    assert hashlib.sha256(bytes(data)).hexdigest()[:16] in msg
    assert "rebuild" in msg
    # other files are unaffected: reading is lazy, per file
    assert ss.read_task("train-000000")["x"].shape == (10,)


def test_corrupt_parquet_with_matching_checksum_is_reported_as_unreadable(tmp_path):
    build_sin(tmp_path / "s")
    f = first_file(tmp_path / "s")
    f.write_bytes(b"PAR1" + b"\0" * 200)
    resign(tmp_path / "s", f)
    with pytest.raises(ShardError) as err:
        open_shard_set(str(tmp_path / "s")).read_task("train-000000")
    assert f.name in str(err.value) and "not a readable Parquet file" in str(err.value)


def test_file_listed_in_manifest_but_missing(tmp_path):
    build_sin(tmp_path / "s")
    f = first_file(tmp_path / "s")
    f.unlink()
    with pytest.raises(ShardError, match=f"{f.name} is listed in the manifest but missing"):
        open_shard_set(str(tmp_path / "s")).read_task("train-000000")


# -- manifests ------------------------------------------------------------------------------


def test_missing_manifest_says_not_a_shard_set_or_interrupted(tmp_path):
    build_sin(tmp_path / "s")
    (tmp_path / "s" / "manifest.json").unlink()
    with pytest.raises(ShardError) as err:
        open_shard_set(str(tmp_path / "s"))
    msg = str(err.value)
    assert "no manifest.json" in msg and "interrupted" in msg
    assert f"metaray shards build {{sinusoid,wordlang,text}} --out {tmp_path / 's'}" in msg


def test_nonexistent_and_empty_directories(tmp_path):
    with pytest.raises(ShardError, match="does not exist"):
        open_shard_set(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match="empty.* is empty: it is not a shard set"):
        open_shard_set(str(tmp_path / "empty"))


def test_manifest_from_a_newer_schema_version(tmp_path):
    build_sin(tmp_path / "s")
    edit_manifest(tmp_path / "s", lambda t: t.update(schema_version=2))
    with pytest.raises(ShardError) as err:
        open_shard_set(str(tmp_path / "s"))
    msg = str(err.value)
    assert "manifest.json" in msg and "schema_version 2 is newer" in msg
    assert "up to 1" in msg and "upgrade metaray" in msg


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda t: t.pop("family"), "field 'family' is missing"),
        (lambda t: t.update(family="images"), "family 'images' is not one of"),
        (
            lambda t: t["tasks"][0].update(rows="ten"),
            r"tasks\[0\]: field 'rows' = 'ten' should be int",
        ),
        (lambda t: t["tasks"][0].update(split="holdout"), "split 'holdout' is not one of"),
        (lambda t: t["tasks"][0].update(rows=11), "rows=.* but its tasks add up to"),
        (lambda t: t.update(columns={"x": "double", "y": "float"}), "field 'columns'"),
    ],
)
def test_damaged_manifest_fields_are_named(tmp_path, edit, expected):
    build_sin(tmp_path / "s")
    edit_manifest(tmp_path / "s", edit)
    with pytest.raises(ShardError, match=expected) as err:
        open_shard_set(str(tmp_path / "s"))
    assert "manifest.json" in str(err.value)


def test_manifest_that_is_not_json(tmp_path):
    build_sin(tmp_path / "s")
    (tmp_path / "s" / "manifest.json").write_text('{"schema_version": 1,')
    with pytest.raises(ShardError, match="manifest.json: not valid JSON"):
        open_shard_set(str(tmp_path / "s"))


# -- columns and types ------------------------------------------------------------------------


def _replace_file(out: Path, f: Path, table: pa.Table) -> None:
    pq.write_table(table, f)
    resign(out, f)


def test_wrong_column_type_in_a_file(tmp_path):
    out = tmp_path / "s"
    build_sin(out)
    f = first_file(out)
    t = pq.read_table(f)
    t = t.set_column(2, "y", pa.array([str(v) for v in t.column("y").to_pylist()]))
    _replace_file(out, f, t)
    with pytest.raises(ShardError) as err:
        open_shard_set(str(out)).read_task("train-000000")
    msg = str(err.value)
    assert f.name in msg and "column 'y' has type string" in msg and "needs float" in msg


def test_missing_and_extra_columns_in_a_file(tmp_path):
    out = tmp_path / "s"
    build_sin(out)
    f = first_file(out)
    t = pq.read_table(f)
    _replace_file(out, f, t.drop_columns(["x"]))
    with pytest.raises(ShardError, match=r"column 'x' is missing \(columns: \['task', 'y'\]\)"):
        open_shard_set(str(out)).read_task("train-000000")
    clear_cache()
    _replace_file(out, f, t.append_column("z", pa.array([1] * t.num_rows)))
    with pytest.raises(ShardError, match=r"unexpected column\(s\) \['z'\]"):
        open_shard_set(str(out)).read_task("train-000000")


def test_source_rows_with_wrong_columns_or_types_are_refused_before_writing(tmp_path):
    bad_type = pa.table({"x": pa.array([1.0], pa.float64()), "y": pa.array([1.0], pa.float32())})
    with pytest.raises(ShardError, match="task 'a': column 'x' has type double.*needs float"):
        write_shard_set(
            str(tmp_path / "s"),
            "sinusoid",
            [SourceTask("a", "train", bad_type)],
            build={"source": "test", "params": {}},
        )
    bad_cols = pa.table({"text": ["a"]})
    with pytest.raises(ShardError, match=r"columns \['text'\] do not match family 'sinusoid'"):
        write_shard_set(
            str(tmp_path / "s"),
            "sinusoid",
            [SourceTask("a", "train", bad_cols)],
            build={"source": "test", "params": {}},
        )
    assert not (tmp_path / "s" / "manifest.json").exists()
    assert list((tmp_path / "s").iterdir()) == []


# -- episodes asking for more rows than a task has -----------------------------------------


def test_task_with_too_few_rows_for_the_episode(tmp_path):
    build_sin(tmp_path / "s", points=10)
    ss = open_shard_set(str(tmp_path / "s"))
    ss.check_min_rows("train", 10)  # exactly enough: fine
    with pytest.raises(EpisodeError) as err:
        ss.check_min_rows("val", 32)
    msg = str(err.value)
    assert "2 val task(s) have fewer than the 32 rows" in msg
    assert "'val-000000' (10 rows)" in msg
    assert "data.k_support + data.k_query" in msg and "--points" in msg


# -- text sources ---------------------------------------------------------------------------


def test_text_file_that_is_not_utf8_names_file_and_line(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("a", "b", "c", "d"):
        (corpus / f"{name}.txt").write_text("one\ntwo\n", encoding="utf-8")
    (corpus / "latin.txt").write_bytes("ok\nfine\ncaf\u00e9 au lait\n".encode("latin-1"))
    p = text.prepare(str(corpus), val_fraction=0.2, test_fraction=0.2)
    with pytest.raises(ShardError) as err:
        write_shard_set(str(tmp_path / "out"), p.family, p.tasks, build=p.build)
    msg = str(err.value)
    assert str(corpus / "latin.txt") in msg and "line 3 is not valid UTF-8" in msg
    assert "byte 0xe9 at column 4" in msg and "iconv" in msg
    # a failed build leaves nothing behind: no manifest, no files
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert list((tmp_path / "out").iterdir()) == []


def test_empty_text_directory_and_missing_input(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match="is an empty directory .*one UTF-8 text file per task"):
        text.prepare(str(tmp_path / "empty"))
    with pytest.raises(ShardError, match="does not exist"):
        text.prepare(str(tmp_path / "missing"))
    (tmp_path / "one.txt").write_text("x\n")
    with pytest.raises(ShardError, match="is a single file"):
        text.prepare(str(tmp_path / "one.txt"))


def test_text_file_with_only_blank_lines(tmp_path):
    corpus = tmp_path / "c"
    corpus.mkdir()
    for name in ("a", "b", "c"):
        (corpus / f"{name}.txt").write_text("x\n")
    (corpus / "blank.txt").write_text("\n  \n")
    p = text.prepare(str(corpus), val_keys="a", test_keys="b")
    with pytest.raises(ShardError, match="blank.txt has no non-blank lines"):
        write_shard_set(str(tmp_path / "out"), p.family, p.tasks, build=p.build)


def test_parquet_input_with_wrong_columns_types_or_bytes(tmp_path):
    f = tmp_path / "in.parquet"
    pq.write_table(pa.table({"lang": ["a"], "text": ["x"]}), f)
    expected = r"has no column 'task' \(columns: lang, text\): pass --task-column"
    with pytest.raises(ShardError, match=expected):
        text.prepare(str(f))
    pq.write_table(pa.table({"task": ["a"], "text": [1]}), f)
    with pytest.raises(ShardError, match="column 'text' has type int64, expected string"):
        text.prepare(str(f))
    f.write_bytes(b"not parquet at all")
    with pytest.raises(ShardError, match="in.parquet is not a readable Parquet file"):
        text.prepare(str(f))


# -- wordlang -------------------------------------------------------------------------------


def test_unknown_wordfreq_language_is_refused_not_replaced_by_english():
    with pytest.raises(ShardError) as err:
        wordlang.prepare(languages="en,xx")
    msg = str(err.value)
    assert "unknown wordfreq language 'xx'" in msg and "English" in msg and "ar, bg" in msg
    with pytest.raises(ShardError, match="did you mean 'pt'"):
        wordlang.prepare(languages="en,pt-BR,de")
    with pytest.raises(ShardError, match="did you mean 'fr' \\(French\\)"):
        wordlang.prepare(languages="french")
    with pytest.raises(ShardError, match="unknown wordfreq language 'nn'"):
        wordlang.prepare(test_languages="nn")


# -- splits ---------------------------------------------------------------------------------


def test_splits_that_leave_no_test_tasks_are_refused(tmp_path):
    with pytest.raises(ShardError, match="--test-tasks=0 leaves no test tasks.*--test-tasks N"):
        sinusoid.prepare(test_tasks=0)
    with pytest.raises(ShardError, match="leaves no test tasks.*--test-languages"):
        wordlang.prepare(languages="en,de,fr,el")  # el is a default val language; no test one
    corpus = tmp_path / "c"
    corpus.mkdir()
    for name in "abcde":
        (corpus / f"{name}.txt").write_text("x\n")
    with pytest.raises(ShardError, match="no test tasks .*--test-fraction > 0 or --test-keys"):
        text.prepare(str(corpus), test_fraction=0.0)
    # the writer checks again, whatever the source
    only_train = [
        SourceTask("a", "train", pa.table({"text": ["x"]})),
        SourceTask("b", "val", pa.table({"text": ["y"]})),
    ]
    with pytest.raises(ShardError, match="the split leaves no test tasks.*--test-keys"):
        write_shard_set(
            str(tmp_path / "o"),
            "text",
            only_train,
            build={"source": "t", "params": {}},
            split_hint="pass --test-keys",
        )
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_unknown_task_and_split_names(tmp_path):
    build_sin(tmp_path / "s")
    ss = open_shard_set(str(tmp_path / "s"))
    with pytest.raises(ShardError, match="no task 'train-00001' .*did you mean 'train-000001'"):
        ss.read_task("train-00001")
    with pytest.raises(ShardError, match="split 'validation' is not one of"):
        ss.tasks("validation")
    with pytest.raises(ShardError, match="scheme 'gs://' is not supported"):
        open_shard_set("gs://bucket/x")


# -- interrupted builds ---------------------------------------------------------------------

CRASH = textwrap.dedent(
    """
    import os, sys
    from pipeline.data.build import write_shard_set
    from pipeline.data.sources import sinusoid

    p = sinusoid.prepare(train_tasks=40, val_tasks=5, test_tasks=5, points=10)

    def crash_midway(tasks):
        for i, t in enumerate(tasks):
            if i == 30:
                os._exit(9)  # like a kill -9: no cleanup, no finally
            yield t

    write_shard_set(sys.argv[1], p.family, crash_midway(p.tasks), build=p.build,
                    rows_per_file=50)
    """
)


def test_build_killed_halfway_leaves_no_manifest_and_rerun_succeeds(tmp_path):
    out = tmp_path / "s"
    proc = subprocess.run([sys.executable, "-c", CRASH, str(out)], cwd=REPO)
    assert proc.returncode == 9
    leftovers = sorted(p.name for p in out.iterdir())
    assert leftovers and "manifest.json" not in leftovers  # some files, no manifest
    with pytest.raises(ShardError, match="but no manifest.json.*interrupted"):
        open_shard_set(str(out))
    result = build_sin(out, train_tasks=40, val_tasks=5, test_tasks=5)
    assert set(result.removed) == set(leftovers)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["manifest.json", *result.manifest.files])
    ss = open_shard_set(str(out))
    assert not ss.verify() and len(ss.tasks("train")) == 40


def test_build_failing_over_a_complete_set_keeps_the_old_set(tmp_path):
    out = tmp_path / "s"
    old = build_sin(out)

    def broken():
        p = sinusoid.prepare(train_tasks=4, val_tasks=2, test_tasks=2, points=12)
        for i, t in enumerate(p.tasks):
            if i == 3:
                raise KeyboardInterrupt
            yield t

    with pytest.raises(KeyboardInterrupt):
        write_shard_set(
            str(out),
            "sinusoid",
            broken(),
            build={"source": "sinusoid", "params": {"points": 12}},
            rows_per_file=10,
            overwrite=True,
        )
    ss = open_shard_set(str(out))
    assert ss.manifest.build["build_id"] == old.manifest.build["build_id"]
    assert not ss.verify()
    assert sorted(p.name for p in out.iterdir()) == sorted(["manifest.json", *old.manifest.files])


# -- the command line -----------------------------------------------------------------------


def test_inspect_exits_nonzero_naming_the_bad_file(tmp_path, capsys):
    out = tmp_path / "s"
    build_sin(out)
    assert cli(["shards", "inspect", str(out)]) == 0
    assert "verify     ok: 3 file(s)" in capsys.readouterr().out
    f = first_file(out, "test")
    f.write_bytes(f.read_bytes()[:-10])
    assert cli(["shards", "inspect", str(out)]) == 1
    err = capsys.readouterr().err
    assert "1 of 3 file(s) failed verification" in err and f.name in err and "truncated" in err


def test_build_command_reports_bad_options_without_traceback(tmp_path, capsys):
    rc = cli(["shards", "build", "wordlang", "--out", str(tmp_path / "w"), "--languages", "en,zz"])
    err = capsys.readouterr().err
    assert rc == 1 and "unknown wordfreq language 'zz'" in err and "Traceback" not in err
