"""PURE task descriptors: a fixed-length, unit-norm vector per task from its support set.

Variants (`bank.descriptor`):
- `hidden`: the meta-model's own final hidden state, mean over every valid support position,
  concatenated with its standard deviation. Read through the model's own `functional` with the
  head swapped for an identity map, so it follows whatever the model computes. One forward.
- `grad`: the support-loss gradient w.r.t. the head bias. For the byte LM that is "predicted
  minus observed" next-byte distribution: which bytes this task uses more or less than the
  meta-model expects. Computed in closed form from the same forward pass (no backward).
- `hidden+grad`: both halves, each normalised, concatenated.
- `ngram`: hashed byte unigram + bigram frequencies of the support text; no model at all
  (a baseline, and a fallback that does not drift as the meta-model trains).

- `auto` (the default): `ngram` for byte data, `hidden` for regression. On wordfreq
  languages n-grams retrieved same-branch languages best and do not drift as the model trains.

Deterministic: same support, same parameters -> the same vector (no sampling, fixed hashing).
Novelty: a task is new when its best stored similarity is below the threshold (`is_novel`).

Support size. A descriptor from K examples is the task's "true" direction plus sampling noise
whose size shrinks like 1/K, so a raw cosine grows with K for every pair: at K=8 close
relatives scored below 0.75 and at K=32 unrelated languages cleared 0.81 (bench/RESULTS.md).
`reliability` measures each query's own noise by a split half (the cosine between the
descriptors of its even and odd examples, stepped up to the full K by Spearman-Brown), and
`calibrated_similarity` divides the raw cosine by the two sides' attenuation, the classical
correction for attenuation. The result estimates the cosine of the noise-free directions, so
one threshold means the same at K=8 and K=32 (measured in bench/bank_regret.py).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

KINDS = ("hidden", "grad", "hidden+grad", "ngram")
NGRAM_DIM = 512
_PAD, _BOS, _EOS = 258, 256, 257


def _unit(v: Tensor) -> Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _params_for_one_model(params: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach() for k, v in params.items()}


def hidden_states(model, params: dict[str, Tensor], x: Tensor, mask: Tensor) -> Tensor:
    """Final hidden states `[T, K, L, H]` (lm) or `[T, K, H]` (classify/regression)."""
    w = params["head.weight"]
    h = w.shape[-1]
    eye = dict(params)
    eye["head.weight"] = torch.eye(h, dtype=w.dtype, device=w.device)
    eye["head.bias"] = torch.zeros(h, dtype=w.dtype, device=w.device)
    return model.functional(eye, x, mask)


def _masked_mean_std(h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    m = mask.to(h.dtype)
    while m.dim() < h.dim():
        m = m.unsqueeze(-1)
    dims = tuple(range(1, h.dim() - 1))  # everything but the task dim and the feature dim
    n = m.sum(dims).clamp_min(1.0)
    mean = (h * m).sum(dims) / n
    var = (((h - mean.view(mean.shape[0], *[1] * (h.dim() - 2), -1)) ** 2) * m).sum(dims) / n
    return mean, var.clamp_min(0).sqrt()


def _head_bias_grad(model, params: dict[str, Tensor], support) -> Tensor:
    """d(mean support NLL)/d(head.bias) = masked mean of softmax(logits) - onehot(y)."""
    logits = model.functional(params, support.x, support.mask)
    p = torch.softmax(logits.float(), dim=-1)
    onehot = torch.nn.functional.one_hot(support.y, p.shape[-1]).to(p.dtype)
    m = support.mask.to(p.dtype)
    if model.kind != "lm":  # one target per example: y [T, K], logits [T, K, C]
        m = torch.ones(support.y.shape, dtype=p.dtype)
    diff = (p - onehot) * m.unsqueeze(-1)
    dims = tuple(range(1, diff.dim() - 1))
    return diff.sum(dims) / m.sum(dims).clamp_min(1.0).unsqueeze(-1)


def ngram_features(x: np.ndarray, mask: np.ndarray, dim: int = NGRAM_DIM) -> np.ndarray:
    """Hashed byte unigram+bigram frequencies `[T, dim]` of byte ids x `[T, K, L]`."""
    x = np.asarray(x, np.int64)
    valid = np.asarray(mask) > 0
    t = x.shape[0]
    out = np.zeros((t, dim), np.float64)
    half = dim // 2
    uni = np.where(valid, x % half, -1)
    bi_ok = valid[..., 1:] & valid[..., :-1]
    bi = np.where(bi_ok, half + (x[..., :-1] * 1_000_003 + x[..., 1:] * 7919) % half, -1)
    for i in range(t):
        for ids in (uni[i].ravel(), bi[i].ravel()):
            ids = ids[ids >= 0]
            out[i] += np.bincount(ids, minlength=dim)
    return np.sqrt(out).astype(np.float32)  # sqrt: frequent bytes do not drown the rest


@torch.no_grad()
def describe(model, params: dict[str, Tensor], support, *, kind: str = "hidden") -> np.ndarray:
    """Unit-norm descriptors `[T, D]` float32 for a task-batched support split (tensors)."""
    if kind == "auto":  # measured best for byte data (bench/RESULTS.md); hidden otherwise
        kind = "ngram" if model.kind != "regression" else "hidden"
    if kind not in KINDS:
        raise ValueError(f"descriptor kind {kind!r}: use auto or one of {', '.join(KINDS)}")
    if model.kind == "regression" and kind != "hidden":
        raise ValueError(
            f"bank.descriptor={kind} needs byte sequences; for regression use hidden (or auto)"
        )
    if kind == "ngram":
        x = support.x.cpu().numpy() if isinstance(support.x, Tensor) else support.x
        m = support.mask.cpu().numpy() if isinstance(support.mask, Tensor) else support.mask
        v = torch.from_numpy(ngram_features(x, m))
        return _unit(v).numpy()
    if "head.weight" not in params:
        raise ValueError(
            "model descriptors need a model with a linear head ('head.weight'); "
            "use bank.descriptor=ngram for this model"
        )
    params = _params_for_one_model(params)
    parts = []
    if kind in ("hidden", "hidden+grad"):
        h = hidden_states(model, params, support.x, support.mask)
        m = support.mask if h.dim() == support.mask.dim() + 1 else torch.ones(h.shape[:-1])
        mean, std = _masked_mean_std(h, m)
        parts.append(_unit(torch.cat([mean, std], dim=-1)))
    if kind in ("grad", "hidden+grad"):
        parts.append(_unit(_head_bias_grad(model, params, support)))
    return _unit(torch.cat(parts, dim=-1)).float().cpu().numpy()


def descriptor_dim(model, kind: str) -> int:
    if kind == "auto":
        kind = "ngram" if model.kind != "regression" else "hidden"
    hidden = model.head.weight.shape[-1]
    out = model.head.weight.shape[0]
    dims = {"hidden": 2 * hidden, "grad": out, "hidden+grad": 2 * hidden + out}
    return dims.get(kind, NGRAM_DIM)


def _halves(support):
    """Even and odd examples of a task-batched split (the split-half of `reliability`)."""
    cut = lambda part, sl: type(part)(*(a[:, sl] for a in part))  # noqa: E731
    return cut(support, slice(0, None, 2)), cut(support, slice(1, None, 2))


def reliability(model, params: dict[str, Tensor], support, *, kind: str = "auto") -> np.ndarray:
    """Squared attenuation `[T]` of each task's K-example descriptor: the expected squared
    cosine between it and the noise-free one. Split-half cosine c between the descriptors of
    the even and odd examples (K/2 each), stepped up to K by Spearman-Brown: 2c / (1 + c).
    Fewer than 2 examples: 1 (nothing to split; no correction)."""
    t, k = support.x.shape[0], support.x.shape[1]
    if k < 2:
        return np.ones(t, np.float32)
    a, b = _halves(support)
    c = (describe(model, params, a, kind=kind) * describe(model, params, b, kind=kind)).sum(-1)
    c = np.clip(c.astype(np.float64), 1e-3, 1.0)  # a negative half-agreement is pure noise
    return (2 * c / (1 + c)).astype(np.float32)


def entry_reliability(rel_query: np.ndarray, k_query: int, k_entry) -> np.ndarray:
    """A stored entry's reliability from its support size, assuming its noise per example is
    the query's (the attenuation model 1 / (1 + v / K) with v read off the query).
    Broadcasts: `rel_query [T, 1]` with `k_entry [T, k]`."""
    rel_query = np.clip(np.asarray(rel_query, np.float64), 1e-3, 1.0)
    v = k_query * (1.0 / rel_query - 1.0)  # noise variance per example
    k_entry = np.maximum(np.asarray(k_entry, np.float64), 1.0)
    return 1.0 / (1.0 + v / k_entry)


def calibrated_similarity(sims, rel_query, rel_entry=1.0, power: float = 0.5) -> np.ndarray:
    """Raw cosine divided by both sides' attenuation `(rel_query * rel_entry) ** power`.
    power=0.5 is the textbook correction (an estimate of the noise-free cosine); the byte
    n-gram descriptor is attenuated more at small K than that model says (sqrt of small
    counts), so `bank.attenuation_power` is fitted on training languages (bench/RESULTS.md).
    May exceed 1 a little (noise in the split half); rank by it only within one query."""
    sims = np.asarray(sims, np.float64)
    rel = np.clip(np.asarray(rel_query, np.float64) * rel_entry, 1e-6, None)
    return (sims / rel**power).astype(np.float32)


def is_novel(best_similarity: float | None, threshold: float) -> bool:
    """New task: nothing stored, or the nearest stored descriptor is below the threshold."""
    return best_similarity is None or best_similarity < threshold
