"""`metaray config show|keys`: the resolved configuration, exactly as a run would use it."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="show the resolved configuration")
    csub = p.add_subparsers(dest="config_command", required=True)
    show = csub.add_parser("show", help="print the resolved config as YAML")
    show.add_argument("--config", help="YAML config file")
    show.add_argument("overrides", nargs="*", help="dotted overrides, e.g. inner.lr=0.05")
    show.set_defaults(func=_show)
    keys = csub.add_parser("keys", help="list every valid key with its description")
    keys.set_defaults(func=_keys)


def _show(args: argparse.Namespace) -> int:
    from pipeline import config

    print(config.to_yaml(config.load(args.config, args.overrides)), end="")
    return 0


def _keys(args: argparse.Namespace) -> int:
    from pipeline import config

    for section, field in config.RunConfig.model_fields.items():
        for name, sub in field.annotation.model_fields.items():
            print(f"{section}.{name:<20} {sub.description or ''} (default: {sub.default!r})")
    return 0
