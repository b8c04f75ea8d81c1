"""Run checkpoints: tensors in safetensors, everything else in JSON; read back without pickle.

A checkpoint directory holds
- `state.safetensors`: the meta-state (`params/..`, `lrs/..`, `opt/..`, `step`, flattened by
  `pipeline.meta.outer.state_to_tensors`) and the torch/numpy RNG states as integer tensors;
- `meta.json` (written LAST, so its presence means the checkpoint is complete): format
  version, step, the resolved run config, the python RNG state, the loss history and the
  sha256 of the tensor file.

Each file is written under a temporary name and renamed into place, so a crash leaves
either the previous checkpoint or a complete new one, never a half-written file.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pipeline.errors import CheckpointError
from pipeline.meta.outer import MetaState, state_from_tensors, state_to_tensors

FORMAT = 1
TENSORS = "state.safetensors"
META = "meta.json"
_RNG = "rng/"


class Loaded(NamedTuple):
    state: MetaState
    config: dict[str, Any]
    history: list[dict[str, float]]
    rng: dict[str, Any]  # pass to `restore_rng`
    extra: dict[str, Any]


def capture_rng() -> dict[str, Any]:
    """Global RNG states (torch CPU [+ CUDA], numpy legacy, python) as tensors + JSON."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, pystate, pygauss = random.getstate()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "numpy": [kind, int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(pystate), pygauss],
    }
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda{i}"] = s
    return out


def restore_rng(rng: dict[str, Any]) -> None:
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if "numpy" in rng and "numpy_keys" in rng:
        kind, pos, has_gauss, gauss = rng["numpy"]
        keys = rng["numpy_keys"].numpy().astype(np.uint32)
        np.random.set_state((kind, keys, pos, has_gauss, gauss))
    if "python" in rng:
        version, state, gauss = rng["python"]
        random.setstate((version, tuple(state), gauss))
    if torch.cuda.is_available():
        states = [rng[f"cuda{i}"] for i in range(torch.cuda.device_count()) if f"cuda{i}" in rng]
        if states:
            torch.cuda.set_rng_state_all(states)


def _atomic_write(path: Path, write: Any) -> None:
    """`write(tmp_path)` then rename onto `path` (same directory, so the rename is atomic)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save(
    directory: str | os.PathLike[str],
    state: MetaState,
    *,
    config: dict[str, Any],
    history: list[dict[str, float]] | None = None,
    rng: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint into `directory` (created if needed); returns it."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    rng = capture_rng() if rng is None else rng
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_to_tensors(state).items()}
    rng_json: dict[str, Any] = {}
    for k, v in rng.items():
        if isinstance(v, torch.Tensor):
            tensors[_RNG + k] = v.detach().to("cpu").contiguous()
        else:
            rng_json[k] = v
    _atomic_write(d / TENSORS, lambda p: save_file(tensors, str(p), metadata={"format": "1"}))
    meta = {
        "format": FORMAT,
        "step": int(state.step),
        "config": config,
        "rng": rng_json,
        "history": history or [],
        "extra": extra or {},
        "tensors_sha256": _sha256(d / TENSORS),
    }
    _atomic_write(d / META, lambda p: p.write_text(json.dumps(meta), encoding="utf-8"))
    return d


def load(directory: str | os.PathLike[str]) -> Loaded:
    """Read a checkpoint written by `save` (safetensors + JSON; no pickle anywhere)."""
    d = Path(directory)
    meta_path, tensor_path = d / META, d / TENSORS
    if not meta_path.is_file():
        raise CheckpointError(
            f"{meta_path} is missing: {d} is not a complete metaray checkpoint (meta.json is "
            "written last, so the save was interrupted); resume from an earlier checkpoint"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{meta_path}: not readable JSON ({exc})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{meta_path}: checkpoint format {meta.get('format')!r}, this metaray reads "
            f"format {FORMAT}; use the metaray version that wrote it"
        )
    if not tensor_path.is_file() or _sha256(tensor_path) != meta.get("tensors_sha256"):
        raise CheckpointError(
            f"{tensor_path} is missing or does not match the sha256 recorded in {meta_path}: "
            "the checkpoint is corrupt; resume from an earlier checkpoint"
        )
    flat = load_file(str(tensor_path), device="cpu")
    rng: dict[str, Any] = dict(meta.get("rng", {}))
    state_flat = {}
    for k, v in flat.items():
        if k.startswith(_RNG):
            rng[k[len(_RNG) :]] = v
        else:
            state_flat[k] = v
    state = state_from_tensors(state_flat)
    if state.step != meta["step"]:
        raise CheckpointError(f"{d}: step {state.step} in {TENSORS} but {meta['step']} in {META}")
    return Loaded(state, meta["config"], meta.get("history", []), rng, meta.get("extra", {}))
