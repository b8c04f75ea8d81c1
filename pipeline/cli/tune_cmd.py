"""`metaray tune --config configs/tune_inner_lr.yaml [section.key=value | tune.key=value ...]`.

A sweep file is a run config plus a `tune:` section (search space, scheduler, search
algorithm; see `pipeline/runtime/tune_config.py`). Prints a table of trials, writes the best
trial's config as a YAML file `metaray train --config` takes as is, and names the best
checkpoint. Rerunning the same command (same tune.storage + tune.name) resumes the sweep.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="sweep meta-hyperparameters with Ray Tune (resumable)")
    p.add_argument("--config", required=True, help="sweep YAML, e.g. configs/tune_inner_lr.yaml")
    p.add_argument("--best-out", help="where to write the best config (default: in the sweep dir)")
    p.add_argument("--check", action="store_true", help="validate the sweep config and stop")
    p.add_argument(
        "--json", action="store_true", help="end with the sweep's result as one JSON line"
    )
    p.add_argument("overrides", nargs="*", help="e.g. outer.steps=200 tune.num_samples=4")
    p.set_defaults(func=_tune)


def _tune(args: argparse.Namespace) -> int:
    from pipeline.runtime.tune_config import load_sweep

    base, sweep = load_sweep(args.config, args.overrides)
    if args.check:
        print(
            f"sweep {sweep.name!r}: {len(sweep.space)} searched key(s), "
            f"{sweep.num_samples} sample(s), scheduler={sweep.scheduler}, "
            f"search={sweep.search}: OK"
        )
        return 0
    from pipeline.runtime.cluster_paths import connected
    from pipeline.runtime.console import follow_workers
    from pipeline.runtime.tune import run_sweep

    with connected(base, sweep), follow_workers(draw=False):  # no per-trial event lines
        result = run_sweep(base, sweep, best_out=args.best_out)
    if args.json:
        import dataclasses

        from pipeline.tracking.redact import dumps

        fields = dataclasses.asdict(result)  # rows and best as objects, not their repr
        fields.pop("table", None)  # the printed table; rows hold the same figures
        print(dumps(fields))  # a diverged trial's NaN loss is null: valid JSON
    return 0 if result.best is not None else 1
