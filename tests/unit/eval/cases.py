"""Helpers shared by the evaluation tests: sinusoid rows and a short run's checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def sine_rows(n: int, seed: int) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        amp, phase = rng.uniform(0.1, 5.0), rng.uniform(0, np.pi)
        x = rng.uniform(-5, 5, 60).astype(np.float32)
        out[f"s{seed}-{i:03d}"] = {"x": x, "y": (amp * np.sin(x - phase)).astype(np.float32)}
    return out


def checkpoint_of(tmp: Path, overrides: list[str], steps: int) -> Path:
    from pipeline import checkpoint, config, local_train

    cfg = config.load(None, [*overrides, "tracking.enabled=false", "cluster.threads_per_worker=1"])
    res = local_train.train(**local_train.slices(cfg), steps=steps)
    return checkpoint.save(
        tmp / "run" / f"checkpoint_{steps:06d}", res.state, config=config.to_dict(cfg)
    )
