"""Entry point for `ray job submit`: meta-train a config on the cluster the job runs in.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/train.py --config configs/quickstart.yaml outer.steps=500

- The job's `python` is the one on the PATH of `ray start`: start the head from the
  project's virtualenv (`.venv/bin/ray start --head`), or ship one with the job's runtime_env.
- Token auth (Ray 2.60): a head started with `RAY_AUTH_MODE=token` (and a token in
  ~/.ray/auth_token, `RAY_AUTH_TOKEN_PATH` or `RAY_AUTH_TOKEN`) refuses clients without it
  ("Missing authentication token"). Export the same `RAY_AUTH_MODE=token` and token variable
  before `ray job submit`; `ray get-auth-token --generate` writes ~/.ray/auth_token for local
  use. The job itself inherits the head's settings and needs nothing. Measured here: a plain
  `ray start --head` (no RAY_AUTH_MODE) accepted clients without a token, while an embedded
  `ray.init()` turns token auth on by itself; `RAY_AUTH_MODE=disabled` opts out (trusted
  networks only). tests/integration/test_train_job.py runs the token case end to end.
- Paths in the config (data.uri, checkpoint.storage) are resolved against the job's working
  directory on the node that runs the driver; on a multi-node cluster use s3:// or a shared
  filesystem so that every node sees them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# The job's working directory (this file's parent's parent) holds the `pipeline` package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="meta-train a metaray config as a Ray job")
    parser.add_argument("--config", required=True, help="YAML config, e.g. configs/quickstart.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. outer.steps=500")
    args = parser.parse_args(argv)

    from pipeline import config
    from pipeline.errors import MetarayError
    from pipeline.runtime.cluster_paths import connected
    from pipeline.runtime.launch import run_training

    try:
        cfg = config.load(args.config, args.overrides)
        with connected(cfg):  # relative or node-local paths refused; RAY_ADDRESS set in a job
            result = run_training(cfg)
    except (config.ConfigError, MetarayError) as exc:
        print(f"metaray job: {exc}", file=sys.stderr)
        return 2
    return 0 if result.steps >= cfg.outer.steps else 1


if __name__ == "__main__":
    sys.exit(main())
