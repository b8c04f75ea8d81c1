"""The `metaray` command. Each subcommand lives in its own module with a `register(sub)`.

Heavy imports (torch, ray, mlflow) happen inside the command functions so that
`metaray --help` and config errors answer in well under a second.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from typing import NoReturn

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

EXAMPLES = """\
examples:
  metaray config ls                                    # the shipped configs
  metaray config cp quickstart my.yaml                 # copy one to edit
  metaray shards build wordlang --out data/quickstart-wordlang --top-n 300 --seed 0
  metaray train --config configs/quickstart.yaml outer.steps=500
  metaray evaluate --checkpoint runs/quickstart --shards data/quickstart-wordlang
  metaray adapt --checkpoint runs/quickstart --support words.txt --out adapted.safetensors
  metaray tune --config configs/tune_inner_lr.yaml tune.num_samples=4
  metaray config keys                                  # every key, its type and default

Every command takes dotted overrides (section.key=value); `metaray COMMAND --help` for more.
"""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("metaray")
    except PackageNotFoundError:
        return "0+source"


class DefaultsFormatter(argparse.HelpFormatter):
    """Shows an option's default when it has a real one (not None, False or a list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "%(default)" in text or default in (None, False, argparse.SUPPRESS) or not text:
            return text
        if action.option_strings and not isinstance(default, (list, dict)):
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            return f"{text} (default: {shown})"
        return text


class Parser(argparse.ArgumentParser):
    """argparse with defaults in every help and a did-you-mean for commands and flags."""

    argv: list[str] = []  # what main() parses: flags a user mistyped are looked for there

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        hint = _suggest(self, message)
        super().error(message + (f"\n  did you mean {hint}?" if hint else ""))


def _all_options(parser: argparse.ArgumentParser) -> list[str]:
    out = []
    for action in parser._actions:
        out += [o for o in action.option_strings if o.startswith("--")]
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out += _all_options(sub)
    return sorted(set(out))


def _suggest(parser: argparse.ArgumentParser, message: str) -> str | None:
    choice = re.search(r"invalid choice: '([^']+)' \(choose from (.+)\)", message)
    if choice:
        options = [c.strip().strip("'") for c in choice.group(2).split(",")]
        close = difflib.get_close_matches(choice.group(1), options, n=1, cutoff=0.5)
        return f"'{close[0]}'" if close else None
    known = _all_options(parser)
    unknown = re.search(r"unrecognized arguments: (.+)", message)
    words = unknown.group(1).split() if unknown else Parser.argv
    flags = [a.split("=", 1)[0] for a in words if a.startswith("--")]
    for flag in (f for f in flags if f not in known):
        close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
        if close:
            return f"'{close[0]}' (for '{flag}')"
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="metaray",
        description="Distributed meta-training of recurrent models on Ray: shards, train, tune, "
        "evaluate, adapt, memory bank.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"metaray {_version()}")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=Parser
    )
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pipeline.config import ConfigError
    from pipeline.errors import MetarayError

    Parser.argv = list(sys.argv[1:] if argv is None else argv)
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
