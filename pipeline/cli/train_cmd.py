"""`metaray train --config configs/<name>.yaml [section.key=value ...]`: meta-train on Ray.

Connects to `cluster.address` or `RAY_ADDRESS` when set, else starts an embedded local Ray.
The same `checkpoint.run_name` + `checkpoint.storage` resumes from the last checkpoint.
"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="meta-train on Ray (embedded local Ray or RAY_ADDRESS)")
    p.add_argument("--config", help="YAML config file, e.g. configs/quickstart.yaml")
    p.add_argument(
        "--json", action="store_true", help="end with the summary as one JSON line on stdout"
    )
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. outer.steps=200")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from pipeline import config
    from pipeline.runtime.cluster_paths import connected
    from pipeline.runtime.launch import run_training

    cfg = config.load(args.config, args.overrides)
    try:
        with connected(cfg):  # node-local checkpoint.storage on a multi-node cluster is refused
            result = run_training(cfg, quiet=args.json)
    except KeyboardInterrupt:  # Ray is shut down by run_training; the checkpoints stay
        print(
            f"metaray: interrupted: run {cfg.checkpoint.run_name!r} keeps its checkpoints in "
            f"{cfg.checkpoint.storage}; run the same command again to resume from the newest "
            "intact one",
            file=sys.stderr,
        )
        return 130
    if args.json:
        from pipeline.runtime.train_summary import as_dict, summary
        from pipeline.tracking.redact import dumps

        print(summary(cfg, result), file=sys.stderr)  # the human summary still shows
        print(dumps(as_dict(cfg, result)))
    return 0 if result.steps >= cfg.outer.steps or result.stopped_early else 1
