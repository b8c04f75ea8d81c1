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


def is_novel(best_similarity: float | None, threshold: float) -> bool:
    """New task: nothing stored, or the nearest stored descriptor is below the threshold."""
    return best_similarity is None or best_similarity < threshold
