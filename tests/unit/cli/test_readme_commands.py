"""Every `metaray` command the README shows parses with the real parser (a renamed flag or
subcommand breaks this test, not a user), and every config it names exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from pipeline.cli import build_parser

ROOT = Path(__file__).resolve().parents[3]
SKETCHES = ("[", "...", " | ")  # usage sketches (`bank inspect [--uri ...]`), not commands


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" # ", 1)[0].strip()
            for part in line.split(" && "):
                part = part.strip()
                for prefix in ("$M ", ".venv/bin/metaray "):
                    if part.startswith(prefix) and not any(s in part for s in SKETCHES):
                        out.append(part.removeprefix(prefix))
    return out


def test_the_readme_shows_commands() -> None:
    assert len(_commands()) >= 25


@pytest.mark.parametrize("command", _commands())
def test_readme_command_parses(command: str) -> None:
    args = build_parser().parse_args(shlex.split(command))
    config = getattr(args, "config", None)
    if config and config.startswith("configs/"):
        assert (ROOT / config).exists(), f"{command}: {config} is not in the repository"
