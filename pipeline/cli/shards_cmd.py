"""`metaray shards build {sinusoid,wordlang,text} --out URI` and `metaray shards inspect URI`."""

from __future__ import annotations

import argparse
import sys

_ROWS_HELP = "most rows per Parquet file (a task is never split: a larger one gets its own file)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shards", help="build and inspect Arrow task shard sets")
    ssub = p.add_subparsers(dest="shards_command", required=True)

    build = ssub.add_parser("build", help="build a shard set from a task source")
    fam = build.add_subparsers(dest="family", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--out", required=True, help="output directory or s3://bucket/prefix")
        q.add_argument("--seed", type=int, default=0, help="seed (recorded in the manifest)")
        q.add_argument("--s3-endpoint", help="S3 endpoint URL (else AWS_ENDPOINT_URL)")
        q.add_argument("--rows-per-file", type=int, default=1_000_000, help=_ROWS_HELP)
        q.add_argument("--force", action="store_true", help="rebuild even if up to date")
        q.add_argument(
            "--overwrite", action="store_true", help="replace a different shard set at --out"
        )
        q.set_defaults(func=_build)

    q = fam.add_parser("sinusoid", help="MAML sinusoid regression: A sin(x - phase)")
    q.add_argument("--train-tasks", type=int, default=1000, help="tasks in the train split")
    q.add_argument("--val-tasks", type=int, default=100, help="tasks in the val split")
    q.add_argument("--test-tasks", type=int, default=100, help="tasks in the test split")
    q.add_argument("--points", type=int, default=50, help="points (rows) per task")
    common(q)

    q = fam.add_parser("wordlang", help="wordfreq word lists: one language per task")
    q.add_argument("--languages", help="comma-separated wordfreq codes (default: all)")
    q.add_argument("--top-n", type=int, default=1000, help="most frequent words per language")
    q.add_argument(
        "--val-languages", help="held-out val languages (default: those of el,he,nl,uk present)"
    )
    q.add_argument(
        "--test-languages", help="held-out test languages (default: those of fa,ko,pt,ta present)"
    )
    common(q)

    q = fam.add_parser("text", help="your own text: one task per file, one example per line")
    q.add_argument(
        "--input",
        required=True,
        help="a directory of UTF-8 text files (one task each) or a Parquet file",
    )
    q.add_argument("--glob", default="*", help="which files of the directory (default: all)")
    q.add_argument("--task-column", default="task", help="Parquet input: the task column")
    q.add_argument("--text-column", default="text", help="Parquet input: the text column")
    q.add_argument("--val-fraction", type=float, default=0.1, help="share of tasks for val")
    q.add_argument("--test-fraction", type=float, default=0.1, help="share of tasks for test")
    q.add_argument("--val-keys", help="comma-separated tasks for val (instead of a fraction)")
    q.add_argument("--test-keys", help="comma-separated tasks for test (instead of a fraction)")
    common(q)

    _register_inspect(ssub)


def _register_inspect(ssub: argparse._SubParsersAction) -> None:
    insp = ssub.add_parser("inspect", help="summarize a shard set and verify every file")
    insp.add_argument("uri", help="directory or s3://bucket/prefix")
    insp.add_argument("--s3-endpoint", help="S3 endpoint URL (else AWS_ENDPOINT_URL)")
    insp.add_argument(
        "--no-verify", action="store_true", help="read the manifest only (skip checksums)"
    )
    insp.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    insp.set_defaults(func=_inspect)


def _prepare(args: argparse.Namespace):
    if args.family == "sinusoid":
        from pipeline.data.sources import sinusoid

        return sinusoid.prepare(
            train_tasks=args.train_tasks,
            val_tasks=args.val_tasks,
            test_tasks=args.test_tasks,
            points=args.points,
            seed=args.seed,
        )
    if args.family == "wordlang":
        from pipeline.data.sources import wordlang

        return wordlang.prepare(
            languages=args.languages,
            top_n=args.top_n,
            val_languages=args.val_languages,
            test_languages=args.test_languages,
            seed=args.seed,
        )
    from pipeline.data.sources import text

    return text.prepare(
        args.input,
        glob=args.glob,
        task_column=args.task_column,
        text_column=args.text_column,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        val_keys=args.val_keys,
        test_keys=args.test_keys,
        seed=args.seed,
        s3_endpoint=args.s3_endpoint,
    )


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n}"


def _build(args: argparse.Namespace) -> int:
    import time

    from pipeline.data.build import command_line, write_shard_set

    prepared = _prepare(args)
    build = {**prepared.build, "command": command_line()}
    t0 = time.perf_counter()
    try:
        result = write_shard_set(
            args.out,
            prepared.family,
            prepared.tasks,
            build=build,
            s3_endpoint=args.s3_endpoint,
            rows_per_file=args.rows_per_file,
            force=args.force,
            overwrite=args.overwrite,
            split_hint=prepared.split_hint,
            log=lambda m: print(m, file=sys.stderr),
        )
    except KeyboardInterrupt:  # the writer removed what it wrote before this reaches here
        print(
            f"metaray: interrupted: nothing was written to {args.out} (a shard set already "
            "there is unchanged); run the same command again to build it",
            file=sys.stderr,
        )
        return 130
    m = result.manifest
    rows = sum(t.rows for t in m.tasks.values())
    if result.skipped:
        print(
            f"{args.out}: up to date ({m.family}, {len(m.tasks)} tasks, {rows} rows, built "
            f"{m.created_utc}); pass --force to rebuild"
        )
    else:
        dt = time.perf_counter() - t0
        print(
            f"{args.out}: built {m.family} shard set: {len(m.tasks)} tasks, {rows} rows, "
            f"{len(m.files)} file(s) in {dt:.1f} s"
        )
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from pipeline.data.shards import open_shard_set
    from pipeline.errors import ShardError

    ss = open_shard_set(args.uri, s3_endpoint=args.s3_endpoint)
    if getattr(args, "json", False):
        return _inspect_json(args, ss)
    m = ss.manifest
    b = m.build
    params = ", ".join(f"{k}={_short(v)}" for k, v in (b.get("params") or {}).items())
    versions = b.get("versions") or {}
    print(f"shard set  {args.uri}")
    print(
        f"family     {m.family} (manifest schema {m.schema_version}, columns "
        f"{', '.join(f'{k}:{v}' for k, v in m.columns.items())})"
    )
    print(
        f"built      {m.created_utc} by metaray {versions.get('metaray', '?')}, "
        f"build {b.get('build_id', '?')}"
    )
    print(f"source     {b.get('source', '?')}: {params}")
    if b.get("command"):
        print(f"command    {b['command']}")
    print(f"{'split':<8}{'tasks':>8}{'rows':>12}{'files':>7}{'bytes':>12}  min/max rows per task")
    summary = m.summary()
    for split, s in summary.items():
        rows = [m.tasks[k].rows for k in m.tasks_in(split)]
        rng = f"{min(rows)}/{max(rows)}" if rows else "-"
        print(
            f"{split:<8}{s['tasks']:>8}{s['rows']:>12}{s['files']:>7}"
            f"{_human(s['bytes']):>12}  {rng}"
        )
    tot = {k: sum(s[k] for s in summary.values()) for k in ("tasks", "rows", "files", "bytes")}
    print(
        f"{'total':<8}{tot['tasks']:>8}{tot['rows']:>12}{tot['files']:>7}{_human(tot['bytes']):>12}"
    )
    leftovers = ss.leftovers()
    if leftovers:
        print(
            f"note       {len(leftovers)} file(s) not in the manifest (earlier builds' "
            f"leftovers; the next build removes them): {', '.join(leftovers[:3])}"
        )
    if args.no_verify:
        print("verify     skipped (--no-verify)")
        return 0
    problems = ss.verify()
    if problems:
        raise ShardError(
            f"{args.uri}: {len(problems)} of {len(m.files)} file(s) failed verification:\n  "
            + "\n  ".join(problems)
        )
    print(
        f"verify     ok: {len(m.files)} file(s), sizes, sha256, schema and task layout "
        "match the manifest"
    )
    return 0


def _inspect_json(args: argparse.Namespace, ss) -> int:
    """`shards inspect --json`: the same facts as the table, for scripts (exit 1: corrupt)."""
    from pipeline.tracking.redact import dumps

    m = ss.manifest
    splits = m.summary()
    for split, s in splits.items():
        rows = [m.tasks[k].rows for k in m.tasks_in(split)]
        s.update(min_rows=min(rows, default=0), max_rows=max(rows, default=0))
    problems = [] if args.no_verify else ss.verify()
    out = {
        "uri": args.uri,
        "family": m.family,
        "schema_version": m.schema_version,
        "columns": dict(m.columns),
        "created_utc": m.created_utc,
        "build": m.build,
        "splits": splits,
        "leftovers": ss.leftovers(),
        "verify": "skipped" if args.no_verify else ("ok" if not problems else "failed"),
        "problems": problems,
    }
    print(dumps(out, indent=1))
    return 1 if problems else 0


def _short(v) -> str:
    if isinstance(v, list) and len(v) > 6:
        return f"[{', '.join(map(str, v[:5]))}, ... {len(v)} in all]"
    if isinstance(v, list):
        return f"[{', '.join(map(str, v))}]"
    return str(v)
