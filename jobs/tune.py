"""Entry point for `ray job submit`: run (or resume) a sweep on the cluster the job runs in.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/tune.py --config configs/tune_inner_lr.yaml tune.num_samples=32

- Same sweep file and overrides as `metaray tune`; resubmitting the same sweep
  (same tune.storage + tune.name) resumes it with `Tuner.restore`.
- Trials run side by side as far as the cluster's CPUs/GPUs allow (each trial's driver
  holds tune.driver_cpus, its workers cluster.num_workers x cluster.cpus_per_worker).
- tune.storage and checkpoint paths must be visible from every node (s3:// or a shared
  filesystem) on a multi-node cluster; the MLflow URI (tracking.uri or MLFLOW_TRACKING_URI
  in the job's runtime_env) must be reachable from the workers, since each trial's rank 0
  logs its own child run. Token auth: see jobs/train.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# The job's working directory (this file's parent's parent) holds the `pipeline` package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run a metaray sweep as a Ray job")
    parser.add_argument("--config", required=True, help="sweep YAML with a tune: section")
    parser.add_argument("--best-out", help="where to write the best config YAML")
    parser.add_argument("overrides", nargs="*", help="e.g. outer.steps=500 tune.num_samples=8")
    args = parser.parse_args(argv)

    from pipeline.config import ConfigError
    from pipeline.errors import MetarayError
    from pipeline.runtime.cluster_paths import connected
    from pipeline.runtime.console import follow_workers
    from pipeline.runtime.tune import run_sweep
    from pipeline.runtime.tune_config import load_sweep

    try:
        base, sweep = load_sweep(args.config, args.overrides)
        with connected(base, sweep), follow_workers(draw=False):  # paths checked first
            result = run_sweep(base, sweep, best_out=args.best_out)
    except (ConfigError, MetarayError) as exc:
        print(f"metaray job: {exc}", file=sys.stderr)
        return 2
    return 0 if result.best is not None else 1


if __name__ == "__main__":
    sys.exit(main())
