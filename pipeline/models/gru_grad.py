"""Hand-written backpropagation through time for the GRU meta-RNN (lm and classify heads).

Why: autograd's backward of the recurrence does one small weight-gradient matmul per time
step (reduction over K rows only), accumulates it 32 times, and builds a zeros+copy per
gate slice. Here the per-step work is the unavoidable `dh @ W_hh` plus elementwise gate
derivatives; the weight gradients are ONE bmm over all time steps (reduction over K*L).
Every op is differentiable, so second-order MAML differentiates through this with autograd
(tested against autograd's own gradients and against a per-task reference loop).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.models.cells import embed, fold_embedding, hidden_proj, input_projection, linear

Params = dict[str, Tensor]


def _back(d: Tensor, w: Tensor) -> Tensor:
    """`d @ w` for d `[T, ..., out]` and w shared `[out, in]` or task-batched `[T, out, in]`."""
    if w.dim() == 3 and w.stride(0) == 0 and not w.requires_grad:
        w = w[0]  # an expand view outside autograd: one mm over all tasks (as cells.linear)
    if w.dim() == 2:
        return d @ w
    t = w.shape[0]
    return torch.bmm(d.reshape(t, -1, d.shape[-1]), w).reshape(*d.shape[:-1], w.shape[-1])


def _back_add(acc: Tensor, d: Tensor, w: Tensor) -> Tensor:
    """`acc + d @ w` in one op (addmm / baddbmm)."""
    if w.dim() == 3 and w.stride(0) == 0 and not w.requires_grad:
        w = w[0]
    if w.dim() == 2:
        return torch.addmm(acc.reshape(-1, acc.shape[-1]), d.reshape(-1, d.shape[-1]), w).view(
            acc.shape
        )
    return torch.baddbmm(acc, d, w)


def _wgrad(d: Tensor, a: Tensor) -> Tensor:
    """Per-task weight gradient `sum_rows d^T a` -> `[T, out, in]` (one bmm)."""
    t = d.shape[0]
    return torch.bmm(d.reshape(t, -1, d.shape[-1]).transpose(1, 2), a.reshape(t, -1, a.shape[-1]))


def _scatter_rows(d: Tensor, x: Tensor, vocab: int) -> Tensor:
    """Sum `d` `[T, ..., D]` into per-task vocabulary rows `[T, V, D]` (embedding backward)."""
    t = x.shape[0]
    offs = torch.arange(t, device=x.device).mul_(vocab).view(t, *([1] * (x.dim() - 1)))
    flat = torch.zeros(t * vocab, d.shape[-1], dtype=d.dtype, device=d.device)
    return flat.index_add(0, (x + offs).reshape(-1), d.reshape(-1, d.shape[-1])).view(t, vocab, -1)


def gru_loss_and_grad(
    params: Params,
    x: Tensor,
    y: Tensor,
    mask: Tensor,
    *,
    layers: int,
    kind: str,
    names: set[str],
    cache: dict | None = None,
) -> tuple[Tensor, Params]:
    """Per-task loss `[T]` (as `losses.task_loss`) and per-task gradients for `names`.
    With `cache` (a dict), the forward and backward intermediates are left in it for the
    Hessian-vector product of `gru_hvp.py` (which needs every layer's backward)."""
    t = x.shape[0]
    table = params["embed.weight"]
    folded = fold_embedding(table, x)
    inp = None if folded else embed(table, x)  # [T, K, L, E]
    caches = []
    for i in range(layers):
        pre = f"rnn.{i}."
        w_hh, b_hh = params[pre + "w_hh"], params[pre + "b_hh"]
        if i == 0:
            gi_all = input_projection(params, x)
        else:
            gi_all = linear(inp, params[pre + "w_ih"], params[pre + "b_ih"])
        hsz = w_hh.shape[-1]
        h = gi_all.new_zeros(*gi_all.shape[:-2], hsz)
        steps, hs_list = [], []
        for gi in gi_all.unbind(dim=-2):
            gh = hidden_proj(h, w_hh, b_hh)
            gi_rz, gi_n = gi.split([2 * hsz, hsz], dim=-1)
            gh_rz, gh_n = gh.split([2 * hsz, hsz], dim=-1)
            r, z = torch.sigmoid(gi_rz + gh_rz).chunk(2, dim=-1)
            n = torch.tanh(gi_n + r * gh_n)
            h_minus_n = h - n  # kept: the z gate's derivative needs it
            steps.append((r, z, n, gh_n, h_minus_n))
            h = n + z * h_minus_n
            hs_list.append(h)
        hs = torch.stack(hs_list, dim=-2)  # [T, K, L, H]
        caches.append((inp, hs, steps))
        inp = hs
    w_o = params["head.weight"]
    if kind == "lm":
        feat = inp
        logits = linear(feat, w_o, params["head.bias"])  # [T, K, L, V]
        logp = torch.log_softmax(logits, dim=-1)
        nll = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)
        cnt = mask.sum((-1, -2)).clamp_min(1.0)
        loss = (nll * mask).sum((-1, -2)) / cnt
        weight = (mask / cnt[:, None, None]).unsqueeze(-1)
    else:  # classify: the state at the last valid position of each sequence
        last = (mask.sum(-1).long() - 1).clamp_min(0)
        idx = last[..., None, None].expand(*last.shape, 1, inp.shape[-1])
        feat = inp.gather(-2, idx).squeeze(-2)  # [T, NK, H]
        logits = linear(feat, w_o, params["head.bias"])  # [T, NK, C]
        logp = torch.log_softmax(logits, dim=-1)
        loss = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1).mean(-1)
        weight = torch.full_like(loss, 1.0 / y.shape[-1])[:, None, None]
    onehot = F.one_hot(y, logits.shape[-1]).to(logits.dtype)
    prob = torch.exp(logp)
    dlogits = (prob - onehot) * weight
    if cache is not None:
        cache.update(layers=caches, feat=feat, prob=prob, dlogits=dlogits, weight=weight)
        cache.update(folded=folded, idx=None if kind == "lm" else idx, back=[None] * layers)
    grads: Params = {}
    if "head.weight" in names:
        grads["head.weight"] = _wgrad(dlogits, feat)
    if "head.bias" in names:
        grads["head.bias"] = dlogits.reshape(t, -1, dlogits.shape[-1]).sum(1)
    if not any(k.startswith(("rnn.", "embed.")) for k in names):
        return loss, grads  # ANIL: the head only
    dfeat = _back(dlogits, w_o)
    # classify: only the last valid position of each sequence receives a gradient
    d_out = dfeat if kind == "lm" else torch.zeros_like(inp).scatter(-2, idx, dfeat[..., None, :])
    for i in range(layers - 1, -1, -1):
        pre = f"rnn.{i}."
        w_ih, w_hh = params[pre + "w_ih"], params[pre + "w_hh"]
        layer_in, hs, steps = caches[i]
        dh = None
        dgis, dghs, dhs = [], [], []
        for dh_t, (r, z, n, gh_n, h_minus_n) in zip(
            reversed(d_out.unbind(dim=-2)), reversed(steps), strict=True
        ):
            dh = dh_t if dh is None else dh + dh_t
            dhs.append(dh)  # the total gradient reaching h_t (kept for the HVP)
            # fused derivative ops (one kernel each, and differentiable for second order)
            da_n = torch.ops.aten.tanh_backward(dh - dh * z, n)
            da_r = torch.ops.aten.sigmoid_backward(da_n * gh_n, r)
            da_z = torch.ops.aten.sigmoid_backward(dh * h_minus_n, z)
            dgi = torch.cat([da_r, da_z, da_n], dim=-1)
            dgh = torch.cat([da_r, da_z, da_n * r], dim=-1)
            dh = _back_add(dh * z, dgh, w_hh)
            dgis.append(dgi)
            dghs.append(dgh)
        dgi_all = torch.stack(dgis[::-1], dim=-2)  # [T, K, L, 3H]
        dgh_all = torch.stack(dghs[::-1], dim=-2)
        h_prev_all = torch.cat([torch.zeros_like(hs[..., :1, :]), hs[..., :-1, :]], dim=-2)
        if cache is not None:
            cache["back"][i] = (dhs[::-1], dgi_all, dgh_all, h_prev_all)
        if pre + "w_hh" in names:
            grads[pre + "w_hh"] = _wgrad(dgh_all, h_prev_all)
        if pre + "b_hh" in names:
            grads[pre + "b_hh"] = dgh_all.reshape(t, -1, dgh_all.shape[-1]).sum(1)
        if pre + "b_ih" in names:
            grads[pre + "b_ih"] = dgi_all.reshape(t, -1, dgi_all.shape[-1]).sum(1)
        if i == 0 and folded:  # gi = P[x] with P = E W^T + b: back through the gather to P
            d_proj = _scatter_rows(dgi_all, x, table.shape[-2])  # [T, V, G*H]
            if cache is not None:
                cache["d_proj"] = d_proj
            if pre + "w_ih" in names:
                rows = table if table.dim() == 3 else table.expand(t, *table.shape)
                grads[pre + "w_ih"] = _wgrad(d_proj, rows)
            if "embed.weight" in names:
                grads["embed.weight"] = _back(d_proj, w_ih)
            break
        if pre + "w_ih" in names:
            grads[pre + "w_ih"] = _wgrad(dgi_all, layer_in)
        if i > 0 or "embed.weight" in names:
            d_out = _back(dgi_all, w_ih)  # gradient w.r.t. this layer's input sequence
    if "embed.weight" in names and not folded:
        grads["embed.weight"] = _scatter_rows(d_out, x, table.shape[-2])
    if cache is not None:
        cache["grads"] = grads
    return loss, grads
