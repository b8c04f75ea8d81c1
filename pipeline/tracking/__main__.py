"""`python -m pipeline.tracking replay FILE`: send a spilled tracking buffer to its server."""

from __future__ import annotations

import sys

from pipeline.tracking.factory import replay

if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "replay":
        sys.exit("usage: python -m pipeline.tracking replay BUFFER.jsonl")
    print(replay(sys.argv[2]))
