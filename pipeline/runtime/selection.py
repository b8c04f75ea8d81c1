"""SHELL: what a training run starts from and which of its checkpoints is its model.

- `restore`: a (re)started run resumes from the newest intact checkpoint of its run directory
  (`resume`), else `checkpoint.resume_from`, else starts from the seed or
  from `checkpoint.init_from`'s parameters. A checkpoint Ray hands over from outside the run
  directory (Tune's PBT exploiting another trial) is used as given.
- `BestVal`: the best validation loss (after adaptation) so far, its step and where its
  checkpoint is; early stopping after `outer.early_stop_patience` validations without a new
  best. It travels in every checkpoint's `extra`, so a resumed run keeps it.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

from pipeline import checkpoint as ckpt
from pipeline import config
from pipeline.errors import CheckpointError
from pipeline.meta.outer import MetaState


def write_best(
    run_uri: str,
    state: MetaState,
    *,
    config: dict[str, Any],
    history: list[dict[str, float]],
    best_val: dict[str, Any],
    s3_endpoint: str | None = None,
) -> str:
    """Save the run's new best-on-validation checkpoint as `<run>/best-stepNNNNNNNN` (meta.json
    last, so it is complete or absent), then delete the older best-* ones. Local or s3://."""
    name = f"{ckpt.BEST_PREFIX}{int(state.step):08d}"
    with tempfile.TemporaryDirectory(prefix="metaray-best-") as tmp:
        ckpt.save(tmp, state, config=config, history=history, extra={"best_val": best_val})
        return copy_checkpoint(
            run_uri, name, tmp, prefix=ckpt.BEST_PREFIX, keep=1, s3_endpoint=s3_endpoint
        )


def copy_checkpoint(
    run_uri: str, name: str, src: str, *, prefix: str, keep: int, s3_endpoint: str | None = None
) -> str:
    """Copy the checkpoint folder `src` to `<run_uri>/<name>` (meta.json last: `checkpoint.find`
    ignores a copy cut short), then delete the run's other `prefix*` folders but the newest
    `keep - 1` (names are zero-padded steps: their order is the steps'). Local or s3://."""
    from pipeline.data.storage import resolve

    loc = resolve(run_uri, s3_endpoint=s3_endpoint)
    if not loc.is_s3:
        loc.fs.create_dir(loc.path(name), recursive=True)
    for f in (ckpt.TENSORS, ckpt.META):
        loc.write_bytes(f"{name}/{f}", (Path(src) / f).read_bytes())
    others = sorted(
        d
        for d in ckpt._candidates(loc)
        if (base := d.rsplit("/", 1)[-1]).startswith(prefix) and base != name
    )
    for old in others[: max(len(others) - (keep - 1), 0)]:
        loc.fs.delete_dir(old)
    return loc.display(name)


def init_params(
    state: MetaState, uri: str, *, s3_endpoint: str | None = None
) -> tuple[MetaState, str]:
    """`state` with its parameters taken from `uri` (`checkpoint.init_from`): a metaray
    checkpoint or run directory (its best on validation), local or s3://, or a .safetensors
    file of parameters (e.g. `metaray evaluate`'s multitask baseline). Inner lrs, optimizer
    and step stay as initialised. Names and shapes must match the model exactly."""
    if uri.endswith(".safetensors") and "://" not in uri and Path(uri).is_file():
        from safetensors.torch import load_file

        try:
            params, where = load_file(uri, device="cpu"), uri
        except Exception as exc:
            raise CheckpointError(f"checkpoint.init_from={uri}: not safetensors ({exc})") from None
    else:
        with ckpt.located(uri, s3_endpoint=s3_endpoint) as found:
            params, where = ckpt.load(found.path).state.params, f"{found.uri} ({found.why})"
    want = {k: tuple(v.shape) for k, v in state.params.items()}
    got = {k: tuple(v.shape) for k, v in params.items()}
    if want != got:
        diff = sorted(set(want) ^ set(got)) + [k for k in want if k in got and want[k] != got[k]]
        raise CheckpointError(
            f"checkpoint.init_from={uri}: its parameters do not fit this model (differing: "
            f"{', '.join(diff[:6])}{' ...' if len(diff) > 6 else ''}); use a checkpoint "
            "trained with the same model.* and data.episode settings"
        )
    like = {k: params[k].to(v.dtype) for k, v in state.params.items()}
    return MetaState(like, state.lrs, state.opt, state.step), where


def resume(
    run_uri: str, *, resume_from: str | None = None, s3_endpoint: str | None = None
) -> tuple[ckpt.Loaded | None, str]:
    """What a (re)started run resumes from, and a line saying so: the newest checkpoint in the
    run directory that verifies (Ray's latest, or one written after it that Ray never
    registered, as after Ctrl+C), skipping a corrupt newest one; with none there,
    `checkpoint.resume_from`; else nothing (a fresh start)."""
    for uri, label in ((run_uri, "the run's"), (resume_from, "checkpoint.resume_from's")):
        if uri is None:
            continue
        try:
            with ckpt.located(uri, s3_endpoint=s3_endpoint, select="last") as found:
                note = f"resumed from {label} {found.why}: {found.uri}"
                if found.skipped:
                    note += "\n  skipped (did not verify): " + "\n  ".join(found.skipped)
                return ckpt.load(found.path), note
        except ckpt.NoCheckpoint:
            if uri == resume_from:
                raise
            continue
    return None, ""


def run_uri(cfg: config.RunConfig) -> str:
    """The run directory Ray Train writes to: `checkpoint.storage/checkpoint.run_name`."""
    return f"{cfg.checkpoint.storage.rstrip('/')}/{cfg.checkpoint.run_name}"


class Restored(NamedTuple):
    state: MetaState
    history: list[dict[str, float]]
    resumed: bool
    note: str  # what it started from, for the run's first line
    extra: dict[str, Any]


def restore(cfg: config.RunConfig, state: MetaState, handed: Any = None) -> Restored:
    """`handed`: the `ray.train.Checkpoint` the attempt was handed (`LoopHost.handed`)."""
    run = run_uri(cfg)
    if handed is not None and not handed.path.startswith(run.removeprefix("s3://")):
        with handed.as_directory() as d:
            loaded, note = (
                ckpt.load(d),
                f"resumed from the checkpoint Ray handed over: {handed.path}",
            )
    else:
        loaded, note = resume(
            run, resume_from=cfg.checkpoint.resume_from, s3_endpoint=cfg.data.s3_endpoint
        )
    if loaded is not None:
        ckpt.restore_rng(loaded.rng)
        history = [h for h in loaded.history if h["step"] <= loaded.state.step]
        return Restored(loaded.state, history, True, note, loaded.extra)
    if cfg.checkpoint.init_from:
        state, where = init_params(
            state, cfg.checkpoint.init_from, s3_endpoint=cfg.data.s3_endpoint
        )
        return Restored(state, [], False, f"parameters from {where}", {})
    return Restored(state, [], False, "", {})


@dataclass
class BestVal:
    loss: float = math.inf
    step: int = 0
    uri: str = ""  # the best-on-validation checkpoint (<run>/best-stepNNNNNNNN)
    since: int = 0  # validations since the best one
    stopped_early: bool = False

    @classmethod
    def from_extra(cls, extra: dict[str, Any]) -> BestVal:
        raw = extra.get("best_val") or {}
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})

    def to_extra(self) -> dict[str, Any]:
        return {"best_val": asdict(self)} if self.step else {}

    def update(self, loss: float, step: int, patience: int | None) -> bool:
        """Record validation `loss` at `step`; True when it is a new best. Sets `stopped_early`
        after `patience` validations without one (all ranks see the same reduced loss)."""
        if loss < self.loss:
            self.loss, self.step, self.since = float(loss), step, 0
            return True
        self.since += 1
        self.stopped_early = patience is not None and self.since >= patience
        return False

    def save(self, cfg: config.RunConfig, state: MetaState, cfg_tree: dict, history: list) -> None:
        """Rank 0: write the new best checkpoint beside Ray's (replaces the previous best)."""
        self.uri = write_best(
            run_uri(cfg),
            state,
            config=cfg_tree,
            history=history,
            best_val={"loss": self.loss, "step": self.step},
            s3_endpoint=cfg.data.s3_endpoint,
        )


def final_params(cfg: config.RunConfig, state: MetaState, best: BestVal) -> tuple[dict, str]:
    """The run's model: its best on validation (`checkpoint.select=best_val`, when it
    validated) or its last state; and a line naming which."""
    if cfg.checkpoint.select == "best_val" and best.step:
        with ckpt.located(run_uri(cfg), s3_endpoint=cfg.data.s3_endpoint) as found:
            return ckpt.load(found.path).state.params, f"model: {found.why}, {found.uri}"
    return state.params, f"model: last step {state.step}"


def prune_unregistered(cfg: config.RunConfig, result: Any) -> list[str]:
    """Delete the run's `checkpoint_*` folders that Ray Train does not track (written before an
    interruption, after Ray's last record; the resumed run has used or superseded them).
    Returns their names. Folders Ray tracks and the best-on-validation one stay."""
    import pyarrow.fs as pafs

    from pipeline.data.storage import resolve

    loc = resolve(run_uri(cfg), s3_endpoint=cfg.data.s3_endpoint)
    sel = pafs.FileSelector(loc.root, allow_not_found=True)
    dirs = [i.path for i in loc.fs.get_file_info(sel) if i.type == pafs.FileType.Directory]
    keep = {c.path.rstrip("/").rsplit("/", 1)[-1] for c, _ in (result.best_checkpoints or [])}
    if result.checkpoint is not None:
        keep.add(result.checkpoint.path.rstrip("/").rsplit("/", 1)[-1])
    gone = []
    for d in dirs:
        name = d.rsplit("/", 1)[-1]
        if name.startswith("checkpoint_") and name not in keep:
            loc.fs.delete_dir(d)
            gone.append(name)
    return gone
