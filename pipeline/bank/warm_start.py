"""Task adaptation with bank warm starts: descriptor -> bank query -> start -> the ONE inner loop.

For each task in a batch: compute its descriptor from the support set, ask the bank for its
nearest stored tasks; if the best similarity clears `bank.threshold`, start from the stored
adapted parameters (`blend=nearest`: the top hit; `blend=weighted`: the similarity-weighted
mean of the top-k hits that clear the threshold), else from the meta-init. Then
`pipeline.meta.inner.adapt`, the same inner loop training uses.

The bank is reached through a plain callable `query(descriptors, k) -> {"keys", "sims",
"params"}` (the actor's `query`, or `BankService.query` in-process), so this module imports no
Ray and is testable in a plain process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from pipeline.config import BankConfig
from pipeline.meta.descriptor import describe

Params = dict[str, Tensor]
BankQuery = Callable[[np.ndarray, int], dict]


def _order(names) -> list[str]:
    """THE order of a flat parameter vector: sorted names. Not the dict's order, which differs
    between a fresh model (`named_parameters()`) and a checkpoint read back (safetensors sorts)."""
    return sorted(names)


def flatten(params: Params, names: list[str] | None = None) -> np.ndarray:
    """Flat float32 vector of `params` (names in sorted order, see `_order`)."""
    names = _order(names or params)
    return np.concatenate([params[k].detach().reshape(-1).float().cpu().numpy() for k in names])


def flatten_batched(params: Params, names: list[str] | None = None) -> np.ndarray:
    """`[T, P]` from task-batched params `[T, ...]` (names in sorted order)."""
    names = _order(names or params)
    t = params[names[0]].shape[0]
    return np.concatenate(
        [params[k].detach().reshape(t, -1).float().cpu().numpy() for k in names], axis=1
    )


def unflatten(flat: np.ndarray | Tensor, like: Params) -> Params:
    """Inverse of `flatten` with the shapes/dtypes of `like`; a leading dim is kept as T."""
    flat = torch.as_tensor(np.asarray(flat, np.float32))
    lead = tuple(flat.shape[:-1])
    total = sum(v.numel() for v in like.values())
    if flat.shape[-1] != total:
        from pipeline.errors import BankError

        raise BankError(
            f"stored parameters have {flat.shape[-1]} values but the model has {total}: "
            "the bank was written by a different architecture; use a bank per model"
        )
    out, i = {}, 0
    for k in _order(like):
        v = like[k]
        n = v.numel()
        out[k] = flat[..., i : i + n].reshape(*lead, *v.shape).to(v.dtype)
        i += n
    return out


@dataclass
class StartInfo:
    """Where each task of a batch started from."""

    sources: list[str] = field(default_factory=list)  # "meta-init" or "bank:<key>[,<key>...]"
    best_sims: list[float | None] = field(default_factory=list)
    descriptors: np.ndarray | None = None

    @property
    def warm(self) -> list[bool]:
        return [s != "meta-init" for s in self.sources]


def warm_start(
    model,
    meta_params: Params,
    support,
    *,
    cfg: BankConfig,
    query: BankQuery | None,
    descriptors: np.ndarray | None = None,
) -> tuple[Params, StartInfo]:
    """Starting parameters and where each task's came from: task-batched `[T, ...]`, or the
    shared meta-init itself when no task of the batch is close to a stored one."""
    t = support.x.shape[0]
    if descriptors is None:
        descriptors = describe(model, meta_params, support, kind=cfg.descriptor)
    info = StartInfo(descriptors=descriptors)
    hits = query(descriptors, cfg.top_k) if query is not None else None
    base = {k: v.detach() for k, v in meta_params.items()}
    flat_base = flatten(base)
    rows = []
    for i in range(t):
        sims = np.asarray(hits["sims"][i]) if hits is not None else np.zeros(0)
        ok = np.flatnonzero(sims >= cfg.threshold)
        info.best_sims.append(float(sims[0]) if sims.size else None)
        if ok.size == 0:
            rows.append(flat_base)
            info.sources.append("meta-init")
            continue
        if cfg.blend == "nearest":
            ok = ok[:1]
        w = sims[ok] / sims[ok].sum()
        stored = np.asarray(hits["params"][i])[ok]
        rows.append((w[:, None] * stored).sum(0).astype(np.float32))
        info.sources.append("bank:" + ",".join(hits["keys"][i][j] for j in ok))
    if not any(info.warm):  # nothing close: exactly the meta-init path (shared, not copied)
        return base, info
    return unflatten(np.stack(rows), base), info


def adapt_with_bank(
    model,
    meta_params: Params,
    support,
    *,
    cfg: BankConfig,
    query: BankQuery | None,
    steps: int,
    lrs,
    trainable=None,
) -> tuple[Params, StartInfo]:
    """Warm start (or meta-init) then `steps` of the core's inner loop; params `[T, ...]`."""
    from pipeline.meta.inner import adapt

    start, info = warm_start(model, meta_params, support, cfg=cfg, query=query)
    adapted = adapt(
        start,
        support,
        model=model,
        steps=steps,
        lrs=lrs,
        first_order=True,  # evaluation: no meta-gradient flows through here
        trainable=trainable,
    )
    return {k: v.detach() for k, v in adapted.items()}, info
