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
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pipeline.errors import CheckpointError
from pipeline.meta.outer import MetaState, state_from_tensors, state_to_tensors
from pipeline.tracking.redact import redact_tree

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
        "config": redact_tree(config),  # a checkpoint is shared: never a credential in it
        "rng": rng_json,
        "history": history or [],
        "extra": extra or {},
        "tensors_sha256": _sha256(d / TENSORS),
    }
    _atomic_write(d / META, lambda p: p.write_text(json.dumps(meta), encoding="utf-8"))
    return d


def _read_meta(d: Path) -> dict[str, Any]:
    """meta.json of checkpoint `d`, checked against its tensor file (sha256); no tensors read."""
    if d.is_file():
        raise CheckpointError(
            f"{d} is a file: give a checkpoint directory (holding {META} and {TENSORS}) or a "
            "run directory (checkpoint.storage/checkpoint.run_name)"
        )
    meta_path, tensor_path = d / META, d / TENSORS
    if not meta_path.is_file():
        raise CheckpointError(
            f"{meta_path} is missing: {d} is not a complete metaray checkpoint (meta.json is "
            "written last, so the save was interrupted); resume from an earlier checkpoint"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise CheckpointError(
            f"{meta_path}: not readable JSON ({type(exc).__name__}): the checkpoint is corrupt; "
            "use another checkpoint of the run"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(
            f"{meta_path}: checkpoint format {got!r}, this metaray reads "
            f"format {FORMAT}; use the metaray version that wrote it"
        )
    if not tensor_path.is_file() or _sha256(tensor_path) != meta.get("tensors_sha256"):
        raise CheckpointError(
            f"{tensor_path} is missing or does not match the sha256 recorded in {meta_path}: "
            "the checkpoint is corrupt; resume from an earlier checkpoint"
        )
    return meta


def verify(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint's meta.json when it is complete and intact, else a `CheckpointError`."""
    return _read_meta(Path(directory))


def load(directory: str | os.PathLike[str]) -> Loaded:
    """Read a checkpoint written by `save` (safetensors + JSON; no pickle anywhere)."""
    d = Path(directory)
    meta = _read_meta(d)
    tensor_path = d / TENSORS
    try:
        flat = load_file(str(tensor_path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise CheckpointError(
            f"{tensor_path}: not a safetensors file ({exc}); the checkpoint is corrupt"
        ) from None
    rng: dict[str, Any] = dict(meta.get("rng", {}))
    state_flat = {}
    for k, v in flat.items():
        if k.startswith(_RNG):
            rng[k[len(_RNG) :]] = v
        else:
            state_flat[k] = v
    try:
        state = state_from_tensors(state_flat)
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{tensor_path}: not a metaray meta-state ({exc})") from None
    if state.step != meta["step"]:
        raise CheckpointError(f"{d}: step {state.step} in {TENSORS} but {meta['step']} in {META}")
    return Loaded(state, meta["config"], meta.get("history", []), rng, meta.get("extra", {}))


# ---------------------------------------------------------------- finding a checkpoint
BEST_PREFIX = "best-step"  # <run dir>/best-stepNNNNNNNN: the run's best on validation


class NoCheckpoint(CheckpointError):
    """Nothing that looks like a checkpoint there (as opposed to one that does not verify)."""


class Found(NamedTuple):
    path: str  # local directory holding meta.json + state.safetensors (an s3:// one is copied)
    uri: str  # where it lives, as the user would name it
    why: str  # "best on validation (step 40, val_loss_post 0.1234)" / "latest (step 60)"
    skipped: list[str]  # newer candidates passed over, each with its reason
    copied: bool = False  # `path` is a temporary copy of an s3:// one: `located` removes it


def _candidates(loc: Any) -> list[str]:
    """Directories at or below `loc.root` that hold a meta.json (paths in `loc.fs`)."""
    import pyarrow.fs as pafs

    if loc.fs.get_file_info(loc.path(META)).type == pafs.FileType.File:
        return [loc.root]
    sel = pafs.FileSelector(loc.root, recursive=True, allow_not_found=True)
    infos = loc.fs.get_file_info(sel)
    return sorted({i.path.rsplit("/", 1)[0] for i in infos if i.path.endswith("/" + META)})


def _local_copy(loc: Any, path: str) -> Path:
    """`path` itself (local) or a temporary copy of its two files (s3://)."""
    if not loc.is_s3:
        return Path(path)
    local = Path(tempfile.mkdtemp(prefix="metaray-ckpt-"))
    for name in (META, TENSORS):
        with loc.fs.open_input_stream(f"{path}/{name}") as f:
            (local / name).write_bytes(f.read())
    return local


def _search_order(loc: Any, dirs: list[str], best: list[str], select: str) -> list[str]:
    """Best-on-validation first (`select="best_val"`), then the others newest step first;
    with another `select` the best ones come last (a run that kept only its best)."""
    rest = [d for d in dirs if d not in best]
    metas: dict[str, int] = {}
    for d in rest:
        try:
            with loc.fs.open_input_stream(f"{d}/{META}") as f:
                metas[d] = int(json.loads(f.read()).get("step", -1))
        except (OSError, ValueError, AttributeError):
            metas[d] = -1  # unreadable: tried last, and reported as skipped
    newest = sorted(rest, key=lambda d: metas[d], reverse=True)
    best_first = sorted(best, reverse=True)
    return best_first + newest if select == "best_val" else newest + best_first


def _best_loss(meta: dict[str, Any]) -> str:
    """The best validation loss in the unit the console and MLflow show it in (bits per byte
    for a language model: the checkpoint stores nats)."""
    from pipeline.runtime.console import loss_unit, to_unit

    loss = meta.get("extra", {}).get("best_val", {}).get("loss")
    if not isinstance(loss, int | float):
        return "?"
    episode = meta.get("config", {}).get("data", {}).get("episode", "")
    unit = loss_unit(episode)
    return f"{to_unit(loss, episode):.4g}" + (f" {unit}" if unit else "")


def find(
    uri: str,
    *,
    s3_endpoint: str | None = None,
    select: str = "best_val",
) -> Found:
    """The checkpoint `uri` names: `uri` itself when it holds a meta.json, else (a run
    directory) its best-on-validation checkpoint (`select="best_val"`, when the run wrote one)
    or its newest, skipping any that do not verify (each skip is reported in `skipped`).
    Local or s3://; every command that reads a checkpoint comes through here, by `located`
    (an s3:// checkpoint is read from a temporary copy that `located` removes)."""
    from pipeline.data.storage import resolve
    from pipeline.errors import ShardError

    if "://" not in uri and not Path(uri).is_dir():
        if Path(uri).exists():
            _read_meta(Path(uri))  # raises the "is a file" message
        raise NoCheckpoint(
            f"no checkpoint found: {uri} does not exist; give a checkpoint or run directory"
        )
    try:
        loc = resolve(uri, s3_endpoint=s3_endpoint)
        dirs = _candidates(loc)
    except (ShardError, OSError) as exc:
        raise CheckpointError(f"checkpoint {uri}: {exc}") from None
    if not dirs:
        raise NoCheckpoint(
            f"{uri}: no checkpoint found (no {META} there or below); give the checkpoint "
            "directory or the run directory (checkpoint.storage/checkpoint.run_name)"
        )
    best = [d for d in dirs if d.rsplit("/", 1)[-1].startswith(BEST_PREFIX)]
    order = _search_order(loc, dirs, best, select)
    skipped = []
    for d in order:
        local = _local_copy(loc, d)
        try:
            meta = _read_meta(local)
        except CheckpointError as exc:
            skipped.append(str(exc))
            if loc.is_s3:
                shutil.rmtree(local, ignore_errors=True)
            continue
        shown = d if not loc.is_s3 else f"s3://{d}"
        if d in best:
            why = f"best on validation (step {meta['step']}, val_loss_post {_best_loss(meta)})"
        elif len(dirs) == 1:
            why = f"step {meta['step']}"
        else:
            why = f"latest intact (step {meta['step']})"
        return Found(str(local), shown, why, skipped, copied=loc.is_s3)
    raise CheckpointError(
        f"{uri}: no intact checkpoint; every candidate failed to verify:\n  " + "\n  ".join(skipped)
    )


@contextmanager
def located(
    uri: str,
    *,
    s3_endpoint: str | None = None,
    select: str = "best_val",
) -> Iterator[Found]:
    """`find`, with the temporary copy of an s3:// checkpoint removed on leaving the block: a
    long-lived process (a Tune trial exploiting a donor, a sweep driver) would otherwise leave
    one copy of a whole checkpoint in the temp dir per look-up."""
    found = find(uri, s3_endpoint=s3_endpoint, select=select)
    try:
        yield found
    finally:
        if found.copied:
            shutil.rmtree(found.path, ignore_errors=True)


def check_readable(uri: str, *, s3_endpoint: str | None = None) -> None:
    """Raise the error a later read of `uri` would raise (a pre-flight check); leaves no copy."""
    with located(uri, s3_endpoint=s3_endpoint):
        pass
