"""`metaray evaluate`: few-shot evaluation of a checkpoint on a shard set's test tasks.

Prints the results table (each method's metric after 0, 1, 2, 5, 10 inner steps, 95% CIs,
paired differences, seen/unseen-script groups for wordlang) and writes JSON + PNG plots.
"""

from __future__ import annotations

import argparse


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated integers") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give non-negative integers, e.g. 0,1,2,5,10")
    return values


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated numbers") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: learning rates must be > 0")
    return values


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="few-shot evaluation: methods x inner steps, with CIs")
    p.add_argument("--checkpoint", required=True, help="checkpoint or run directory (or s3://)")
    p.add_argument("--shards", required=True, help="shard set whose test tasks are evaluated")
    p.add_argument("--bank", help="memory-bank snapshot URI: adds the bank warm start")
    p.add_argument(
        "--json", dest="json_path", help="write the report JSON here ('-': print it on stdout)"
    )
    p.add_argument("--out", default="eval", help="directory for plots, table, baseline cache")
    p.add_argument("--shots", type=_ints, help="support sizes, e.g. 16,64,256 (lm) or 1,5")
    p.add_argument("--k-query", type=int, default=None, help="query examples per task/class")
    p.add_argument("--steps", type=_ints, default=(0, 1, 2, 5, 10), help="inner steps reported")
    p.add_argument("--episodes", type=int, default=10, help="episodes per test task and shot")
    p.add_argument("--max-tasks", type=int, help="evaluate only the first N test tasks")
    p.add_argument("--seed", type=int, default=20_251_128, help="seeds the episodes")
    p.add_argument("--baseline", help="multitask baseline file to reuse (safetensors)")
    p.add_argument("--baseline-steps", type=int, help="multitask steps (default: as trained)")
    p.add_argument("--lr-grid", type=_floats, help="fine-tuning lrs tried for the baselines")
    p.add_argument(
        "--support-floor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="lm: score query bytes under a mixture with uniform whose weight is fitted on each "
        "episode's support words, for every method alike (a model that predicts a task's "
        "support worse than a uniform guess falls back toward uniform); on by default, "
        "--no-support-floor scores the plain softmax",
    )
    p.add_argument(
        "--tracking",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="log to MLflow (default: as the checkpoint's tracking config)",
    )
    p.add_argument("--s3-endpoint", help="S3 endpoint URL (else AWS_ENDPOINT_URL)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, help="torch threads (default: the run's per worker)")
    p.add_argument(
        "overrides",
        nargs="*",
        help="with --bank: the warm start's settings, e.g. bank.fallback=true bank.top_k=5 "
        "(default: the checkpoint's); only bank.* keys",
    )
    p.set_defaults(func=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from pipeline.runtime import console

    console.quiet()
    from pipeline.eval import run as eval_run
    from pipeline.eval.methods import EvalSpec
    from pipeline.tracking.evaluation import fail_open

    spec = EvalSpec(
        steps=args.steps,
        shots=args.shots or (),
        k_query=args.k_query or 0,
        episodes=args.episodes,
        seed=args.seed,
        support_floor=args.support_floor,
    )
    opts = eval_run.Options(
        checkpoint=args.checkpoint,
        shards=args.shards,
        bank=args.bank,
        out_dir=args.out,
        json_path=None if args.json_path == "-" else args.json_path,
        spec=spec,
        baseline=args.baseline,
        baseline_steps=args.baseline_steps,
        lr_grid=args.lr_grid or eval_run.LR_GRID,
        max_tasks=args.max_tasks,
        tracking=args.tracking,
        s3_endpoint=args.s3_endpoint,
        device=args.device,
        threads=args.threads,
        bank_overrides=tuple(args.overrides),
    )
    try:
        eval_run.run(opts)
    except BaseException:
        fail_open()  # the MLflow run opened at the start ends FAILED, not RUNNING
        raise
    if args.json_path == "-":  # the report as written to --out, on stdout for scripts
        from pathlib import Path

        print((Path(args.out) / "eval.json").read_text(encoding="utf-8"))
    return 0
