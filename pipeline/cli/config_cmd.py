"""`metaray config show|keys|ls|cp`: the resolved configuration, every key, the shipped configs.

metaray config ls                       # shipped configs, with their first comment line
metaray config cp quickstart my.yaml    # copy one to edit (as torchtune's `tune cp`)
metaray config show --config configs/tune_smoke.yaml   # run config + the `tune:` section
"""

from __future__ import annotations

import argparse
import typing
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="show the resolved configuration; list or copy configs")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = csub.add_parser("show", help="print the resolved config (or sweep) as YAML")
    show.add_argument("--config", help="YAML config or sweep file")
    show.add_argument("overrides", nargs="*", help="dotted overrides, e.g. inner.lr=0.05")
    show.set_defaults(func=_show)
    keys = csub.add_parser("keys", help="list every valid key (tune.* too): type, default, why")
    keys.set_defaults(func=_keys)
    ls = csub.add_parser("ls", help="list the configs shipped with metaray")
    ls.set_defaults(func=_ls)
    cp = csub.add_parser("cp", help="copy a shipped config to edit it")
    cp.add_argument("name", help="a name from `metaray config ls` (with or without .yaml)")
    cp.add_argument("dest", help="file or directory to copy it to")
    cp.add_argument("--force", action="store_true", help="overwrite an existing file")
    cp.set_defaults(func=_cp)


def shipped_dir() -> Path:
    """The configs installed with the package (`pipeline/configs` in a wheel), else the
    source tree's `configs/`."""
    here = Path(__file__).resolve().parents[1]
    for d in (here / "configs", here.parent / "configs"):
        if d.is_dir() and any(d.glob("*.yaml")):
            return d
    from pipeline.errors import MetarayError

    raise MetarayError(f"no shipped configs found beside {here}; reinstall metaray")


def _first_comment(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def _ls(args: argparse.Namespace) -> int:
    d = shipped_dir()
    for f in sorted(d.glob("*.yaml")):
        print(f"{f.stem:<16} {_first_comment(f)}")
    print(f"\n({d}; copy one with `metaray config cp NAME DEST`)")
    return 0


def _cp(args: argparse.Namespace) -> int:
    import difflib
    import os
    import shutil

    from pipeline.errors import MetarayError

    d = shipped_dir()
    names = sorted(f.stem for f in d.glob("*.yaml"))
    name = args.name.removesuffix(".yaml")
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise MetarayError(f"no shipped config {args.name!r} (have: {', '.join(names)}){hint}")
    dest = Path(args.dest)
    if dest.is_dir():
        dest = dest / f"{name}.yaml"
    if dest.exists() and not args.force:
        raise MetarayError(f"{dest} exists; pass --force to overwrite it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.copyfile(d / f"{name}.yaml", tmp)
    os.replace(tmp, dest)
    print(f"copied {name}.yaml to {dest}; train with: metaray train --config {dest}")
    return 0


def _show(args: argparse.Namespace) -> int:
    import yaml

    from pipeline import config

    tree = config.read_yaml(args.config) if args.config else {}
    if "tune" in tree or any(o.startswith("tune.") for o in args.overrides):
        from pipeline.runtime.tune_config import load_sweep

        base, sweep = load_sweep(args.config, args.overrides)
        print(config.to_yaml(base), end="")
        print(yaml.safe_dump({"tune": sweep.model_dump()}, sort_keys=False), end="")
        return 0
    print(config.to_yaml(config.load(args.config, args.overrides)), end="")
    return 0


def _type(annotation: typing.Any) -> str:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + "|".join(map(str, args))
    if typing.get_origin(annotation) in (tuple, list):  # tuple[int, ...]: a YAML list of ints
        return "list of " + _type(args[0])
    if args:
        return " or ".join(_type(a) for a in args if a is not type(None)) + (
            " or null" if type(None) in args else ""
        )
    return getattr(annotation, "__name__", str(annotation))


def _rows(prefix: str, model: typing.Any) -> list[str]:
    from pydantic import BaseModel

    out = []
    for name, f in model.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _rows(f"{prefix}{name}.", ann)
            continue
        default = (
            "required" if f.is_required() else "null" if f.default is None else repr(f.default)
        )
        kind = "mapping" if typing.get_origin(ann) is dict else _type(ann)
        out.append(f"{prefix + name:<32} {kind:<28} default {default:<14} {f.description or ''}")
    return out


def _keys(args: argparse.Namespace) -> int:
    from pipeline import config
    from pipeline.runtime.tune_config import SweepConfig

    for section, field in config.RunConfig.model_fields.items():
        print("\n".join(_rows(f"{section}.", field.annotation)))
    print("\n# sweep files only (`metaray tune`), under `tune:`:")
    print("\n".join(_rows("tune.", SweepConfig)))
    return 0
