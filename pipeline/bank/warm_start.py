"""Task adaptation with bank warm starts: descriptor -> bank query -> start -> the ONE inner loop.

For each task in a batch: compute its descriptor from the support set and ask the bank for its
`bank.top_k` nearest stored tasks. A hit is related when its similarity clears `bank.threshold`:
with `bank.similarity=calibrated` (the default) that is the cosine corrected for both sides'
sampling noise (`pipeline.meta.descriptor.calibrated_similarity`), so one threshold means the
same at every support size. No hit: the meta-init (a novel task). Otherwise the start is
- `bank.select=similarity`: the top hit (`blend=nearest`) or the similarity-weighted mean of
  the hits (`blend=weighted`);
- `bank.select=probe` (the default): whichever of the meta-init, each of the top-k (all of
  them by default; with `bank.probe_gate` only the hits) and their weighted blend has the
  lowest support loss after `bank.probe_steps` inner steps (or its mean over a list of step
  counts): adapted and scored on the whole support, as the task itself will be adapted (the
  default), or with `bank.probe_split` adapted on the even support examples and scored on
  the odd ones, and the other way round. Only the support set is used (never the query),
  and the meta-init is always a candidate, so a wrong entry costs only when the probe is
  fooled by a small support. The threshold then only makes the novelty decision
  (`StartInfo.novel`: no stored task is related).
Then `pipeline.meta.inner.adapt`, the same inner loop training uses; with `bank.fallback` the
meta-init's trajectory runs beside each warm start, and a task whose warm start ends with the
higher support loss ends from the meta-init's (`inner.adapt_then_score_with_fallback`).

The bank is reached through a plain callable `query(descriptors, k) -> {"keys", "sims",
"params"[, "support"]}` (the actor's `query`, `BankService.query`, or `with_entry_support`
around a service), so this module imports no Ray and is testable in a plain process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from pipeline.config import BankConfig
from pipeline.meta import descriptor as dsc

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
    best_sims: list[float | None] = field(default_factory=list)  # raw cosine of the top hit
    calibrated_sims: list[float | None] = field(default_factory=list)  # what the threshold saw
    reliability: list[float | None] = field(default_factory=list)  # query x entry, top hit
    novel: list[bool] = field(default_factory=list)  # the novelty decision: nothing related
    descriptors: np.ndarray | None = None
    probe: list[dict[str, float]] = field(default_factory=list)  # per task: candidate -> loss
    fell_back: list[bool] = field(default_factory=list)  # bank.fallback: ended on the meta-init's

    @property
    def warm(self) -> list[bool]:
        return [s != "meta-init" for s in self.sources]


def with_entry_support(service) -> BankQuery:
    """`service.query` plus each hit's stored support size (from `service.get`), so that the
    calibrated similarity corrects the stored side for its own sampling noise too."""

    def query(descriptors: np.ndarray, k: int) -> dict:
        hits = service.query(descriptors, k)
        if "support" not in hits:  # a bank from before query answered it
            got = [[int(service.get(k).get("support", 0) or 0) for k in r] for r in hits["keys"]]
            hits["support"] = np.array(got)
        return hits

    return query


def _scored_sims(model, meta_params, support, cfg: BankConfig, hits):
    """`[T, k]` similarities the threshold is applied to (raw or calibrated), and the `[T, k]`
    reliability products they were divided by (ones for raw)."""
    sims = np.asarray(hits["sims"], np.float64)
    if cfg.similarity == "raw" or sims.size == 0:
        return sims, np.ones_like(sims)
    rel_q = dsc.reliability(model, meta_params, support, kind=cfg.descriptor)[:, None]
    k_entry = np.asarray(hits.get("support", np.zeros_like(sims)), np.float64)
    # an entry of unknown support (0) is taken as noise-free: the bank fill's large supports
    rel_e = np.where(k_entry > 0, dsc.entry_reliability(rel_q, support.x.shape[1], k_entry), 1.0)
    return dsc.calibrated_similarity(sims, rel_q, rel_e, cfg.attenuation_power), rel_q * rel_e


def _blend(sims: np.ndarray, stored: np.ndarray) -> np.ndarray:
    w = np.clip(sims, 1e-6, None)
    return ((w / w.sum())[:, None] * stored).sum(0).astype(np.float32)


def _candidates(i, hits, scored, flat_base, cfg: BankConfig) -> list[tuple[str, np.ndarray]]:
    """(source label, flat start) pairs for task `i`; the meta-init first."""
    gate = cfg.select == "similarity" or cfg.probe_gate
    ok = np.flatnonzero(scored[i] >= cfg.threshold) if gate else np.arange(len(scored[i]))
    if ok.size == 0:
        return [("meta-init", flat_base)]
    keys = [hits["keys"][i][j] for j in ok]
    stored = np.asarray(hits["params"][i])[ok].astype(np.float32)
    blend = ("bank:" + ",".join(keys), _blend(scored[i][ok], stored))
    if cfg.select == "similarity":
        return [blend] if cfg.blend == "weighted" else [("bank:" + keys[0], stored[0])]
    out = [("meta-init", flat_base)] + [("bank:" + k, r) for k, r in zip(keys, stored, strict=True)]
    return out + ([blend] if len(keys) > 1 else [])


def probe_losses(
    model,
    starts: Params,
    owner: np.ndarray,
    support,
    *,
    steps,
    lrs,
    trainable,
    max_step_norm=None,
    split: bool = True,
):
    """Probe loss `[R]` of R task-batched starts, row r on task `owner[r]`'s support: `steps`
    inner steps on the whole support scored there (`split=False`), or on the even examples
    scored on the odd ones, averaged with the reverse (`split=True`, a held-out loss). `steps`
    a list: the mean of those losses after each of its (ascending) counts. With steps=0 (or a
    single example) the plain step-0 loss on the whole support."""
    from pipeline.meta.inner import adapt_then_score
    from pipeline.meta.losses import model_loss

    counts = (steps,) if isinstance(steps, int) else tuple(steps)
    idx = torch.as_tensor(owner, dtype=torch.long)
    rows = type(support)(*(torch.as_tensor(a).index_select(0, idx) for a in support))
    if counts == (0,) or rows.x.shape[1] < 2:
        with torch.no_grad():
            return model_loss(model, starts, rows).double().numpy()
    halves = dsc._halves(rows)
    pairs = (halves, halves[::-1]) if split else ((rows, rows),)
    total = np.zeros(len(owner))
    for fit, held in pairs:
        losses = adapt_then_score(  # one trajectory per start, scored at each count
            starts,
            fit,
            held,
            model=model,
            steps=counts,
            lrs=lrs,
            trainable=trainable,
            score=lambda p, q: model_loss(model, p, q).double().numpy(),
            max_step_norm=max_step_norm,
        )
        total += sum(losses.values())
    return total / (len(pairs) * len(counts))


def _pick(
    model, base, cands, support, cfg: BankConfig, lrs, trainable, info, max_step_norm=None
) -> list[int]:
    """Index of each task's chosen candidate: the lowest probe loss where there is a choice
    (one batched probe over every candidate of every task); `info.probe` records the losses."""
    t = len(cands)
    pick, info.probe = [0] * t, [{} for _ in range(t)]
    many = [i for i in range(t) if len(cands[i]) > 1]
    if not many:
        return pick
    if lrs is None:
        raise ValueError("bank.select=probe needs the inner learning rates: pass lrs=")
    owner = np.array([i for i in many for _ in cands[i]])
    flat = np.stack([row for i in many for _, row in cands[i]])
    starts = unflatten(flat, base)
    loss = probe_losses(
        model,
        starts,
        owner,
        support,
        steps=cfg.probe_steps,
        lrs=lrs,
        trainable=trainable,
        max_step_norm=max_step_norm,
        split=cfg.probe_split,
    )
    at = 0
    for i in many:
        n = len(cands[i])
        pick[i] = int(np.argmin(loss[at : at + n]))
        losses = loss[at : at + n]
        info.probe[i] = {lab: float(x) for (lab, _), x in zip(cands[i], losses, strict=True)}
        at += n
    return pick


def warm_start(
    model,
    meta_params: Params,
    support,
    *,
    cfg: BankConfig,
    query: BankQuery | None,
    descriptors: np.ndarray | None = None,
    lrs=None,
    trainable=None,
    max_step_norm: float | None = None,
) -> tuple[Params, StartInfo]:
    """Starting parameters and where each task's came from: task-batched `[T, ...]`, or the
    shared meta-init itself when no task of the batch is close to a stored one. `lrs` (and
    `trainable`, `max_step_norm`) are the inner loop's, needed by `bank.select=probe`."""
    t = support.x.shape[0]
    if descriptors is None:
        descriptors = dsc.describe(model, meta_params, support, kind=cfg.descriptor)
    info = StartInfo(descriptors=descriptors)
    base = {k: v.detach() for k, v in meta_params.items()}
    hits = query(descriptors, cfg.top_k) if query is not None else None
    if hits is None or np.asarray(hits["sims"]).size == 0:
        info.sources, info.best_sims, info.calibrated_sims = (
            ["meta-init"] * t,
            [None] * t,
            [None] * t,
        )
        info.novel = [True] * t
        return base, info
    scored, rel = _scored_sims(model, base, support, cfg, hits)
    flat_base = flatten(base)
    cands = [_candidates(i, hits, scored, flat_base, cfg) for i in range(t)]
    info.best_sims = [float(hits["sims"][i][0]) for i in range(t)]
    info.calibrated_sims = [float(scored[i][0]) for i in range(t)]
    info.reliability = [float(rel[i][0]) for i in range(t)]
    info.novel = [dsc.is_novel(c, cfg.threshold) for c in info.calibrated_sims]
    pick = _pick(model, base, cands, support, cfg, lrs, trainable, info, max_step_norm)
    info.sources = [cands[i][pick[i]][0] for i in range(t)]
    if not any(info.warm):  # nothing close: exactly the meta-init path (shared, not copied)
        return base, info
    return unflatten(np.stack([cands[i][pick[i]][1] for i in range(t)]), base), info


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
    max_step_norm: float | None = None,
) -> tuple[Params, StartInfo]:
    """Warm start (or meta-init) then `steps` of the core's inner loop; params `[T, ...]`.
    With `bank.fallback`, a warm-started task whose support loss after `steps` is above the
    meta-init's adapted one gets the meta-init's result (`StartInfo.fell_back`)."""
    from pipeline.meta.inner import adapt, adapt_then_score_with_fallback

    start, info = warm_start(
        model,
        meta_params,
        support,
        cfg=cfg,
        query=query,
        lrs=lrs,
        trainable=trainable,
        max_step_norm=max_step_norm,
    )
    kw = dict(model=model, lrs=lrs, trainable=trainable, max_step_norm=max_step_norm)
    info.fell_back = [False] * support.x.shape[0]
    if cfg.fallback and any(info.warm):
        kept, fell = adapt_then_score_with_fallback(
            start, meta_params, support, support, steps=[steps], score=lambda p, q: p, **kw
        )
        info.fell_back = fell[steps].tolist()
        return kept[steps], info
    # first order: evaluation, no meta-gradient flows through here
    adapted = adapt(start, support, steps=steps, first_order=True, **kw)
    return {k: v.detach() for k, v in adapted.items()}, info
