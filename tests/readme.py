"""The README's shell command lines, as the tests read them.

A command line is one line of a ```bash block of README.md, with its `\\` continuations
joined, its trailing ` # comment` dropped and runs of spaces collapsed to one. The unit
guard (tests/unit/test_readme_coverage.py) checks that each one is run by a test or says
why not; the integration tests look the lines they run up here, so a README edit that
changes a line fails the test that runs it instead of leaving it silently untested.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def command_lines(text: str | None = None) -> list[str]:
    """Every command line of every ```bash block, in README order (repeats kept)."""
    text = README.read_text(encoding="utf-8") if text is None else text
    return [ln for block in re.findall(r"```bash\n(.*?)```", text, re.S) for ln in _lines(block)]


def script_lines(path: Path) -> list[str]:
    """A shell script's command lines, read as the README's (e.g. scripts/quickstart.sh)."""
    return _lines(path.read_text(encoding="utf-8"))


def _lines(shell: str) -> list[str]:
    out = []
    for raw in shell.replace("\\\n", " ").splitlines():
        line = " ".join(raw.split(" # ", 1)[0].split())
        if line and not line.startswith("#"):
            out.append(line)
    return out


def line(start: str) -> str:
    """The README command line `start`, else the one that starts with it (an error names
    the candidates)."""
    lines = command_lines()
    if start in lines:
        return start
    found = sorted({c for c in lines if c.startswith(start)})
    if len(found) != 1:
        raise LookupError(f"README.md has {len(found)} command lines starting {start!r}: {found}")
    return found[0]
