"""The `metaray` command. Each subcommand lives in its own module with a `register(sub)`.

Heavy imports (torch, ray, mlflow) happen inside the command functions so that
`metaray --help` and config errors answer in well under a second.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.cli import (
    adapt_cmd,
    bank_cmd,
    config_cmd,
    evaluate_cmd,
    shards_cmd,
    train_cmd,
    tune_cmd,
)

COMMANDS = [config_cmd, shards_cmd, bank_cmd, adapt_cmd, train_cmd, tune_cmd, evaluate_cmd]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metaray",
        description="Distributed meta-training of recurrent models on Ray: shards, train, tune, "
        "evaluate, adapt, memory bank.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pipeline.config import ConfigError
    from pipeline.errors import MetarayError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"metaray: config error: {exc}", file=sys.stderr)
        return 2
    except MetarayError as exc:
        print(f"metaray: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `metaray ... | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
