"""Hand-written backpropagation through time for the GRU meta-RNN (lm and classify heads).

Why: autograd's backward of the recurrence does one small weight-gradient matmul per time
step (reduction over K rows only), accumulates it 32 times, and builds a zeros+copy per
gate slice. Here the per-step work is the unavoidable `dh @ W_hh` plus elementwise gate
derivatives; the weight gradients are ONE bmm over all time steps (reduction over K*L).
Every op is differentiable, so second-order MAML differentiates through this with autograd
(tested against autograd's own gradients and against a per-task reference loop). Outside
autograd (the no-autograd sweep of meta/manual.py) each step writes its results into slots of
one preallocated `[T, K, L, D]` buffer with `out=` instead of stacking/joining per step (the
joins were 14% of a chargru meta-step), and the gate math uses fused `addcmul`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pipeline.models.cells import embed, fold_embedding, hidden_proj, input_projection, linear

Params = dict[str, Tensor]
Step = tuple[Tensor, Tensor, Tensor, Tensor]  # one forward step kept: (r|z, n, gh_n, h - n)
Kept = tuple[Tensor, Tensor, Tensor]  # one backward step kept: (dh, dh (1 - z), grads at r|z)


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


def _sb(g: Tensor, y: Tensor, out: Tensor | None = None) -> Tensor:
    """sigmoid'(a) * g from y = sigmoid(a), written into `out` (a buffer slot) when given."""
    if out is None:
        return torch.ops.aten.sigmoid_backward(g, y)
    return torch.ops.aten.sigmoid_backward.grad_input(g, y, grad_input=out)


def _tb(g: Tensor, y: Tensor, out: Tensor | None = None) -> Tensor:
    """tanh'(a) * g from y = tanh(a), written into `out` when given."""
    if out is None:
        return torch.ops.aten.tanh_backward(g, y)
    return torch.ops.aten.tanh_backward.grad_input(g, y, grad_input=out)


def _tanh(a: Tensor) -> Tensor:
    """tanh(a) as 2 sigmoid(2a) - 1, overwriting `a` (a fresh temporary): torch's CPU tanh
    runs at ~4.6 ns/element here against sigmoid's ~0.5 (74 vs 31 us at [8, 16, 128], 1
    thread; 20% of the forward recurrence). float32 error 1.8e-7 absolute, float64 3e-16."""
    s = torch.sigmoid(a.mul_(2.0))
    return torch.add(s, s).sub_(1.0)  # sigmoid's output stays as saved (autograd path)


class _Seq:
    """Per-time-step results `[..., D]` gathered into one `[..., L, D]` tensor. In place (fast):
    each step writes its slot with `out=` (no per-step stack/cat copy, 14% of a meta-step
    before); under autograd (`out=` is not differentiable) the steps are stacked at the end."""

    def __init__(self, like: Tensor, length: int, width: int, fast: bool) -> None:
        """like: one step's `[..., D']` (its leading dims and dtype are the buffer's)."""
        shape = (*like.shape[:-1], length, width)
        self.buf = like.new_empty(shape) if fast else None
        self.items: dict[int, Tensor] = {}

    def slot(self, t: int, lo: int = 0, hi: int | None = None) -> Tensor | None:
        return None if self.buf is None else self.buf.select(-2, t)[..., lo:hi]

    def put(self, t: int, value: Tensor) -> Tensor:
        if self.buf is None:
            self.items[t] = value
        return value

    def done(self) -> Tensor:
        if self.buf is not None:
            return self.buf
        return torch.stack([self.items[t] for t in sorted(self.items)], dim=-2)


def _pair(a: Tensor, b: Tensor, c: Tensor, d: Tensor, fast: bool) -> Tensor:
    """`[a * b, c * d]` along the last dim (fast: both products written into one tensor)."""
    if not fast:
        return torch.cat([a * b, c * d], dim=-1)
    hsz = a.shape[-1]
    out = a.new_empty(*a.shape[:-1], 2 * hsz)
    torch.mul(a, b, out=out[..., :hsz])
    torch.mul(c, d, out=out[..., hsz:])
    return out


def _forward_layer(
    gi_all: Tensor, w_hh: Tensor, b_hh: Tensor, fast: bool
) -> tuple[Tensor, list[Step]]:
    """One layer's recurrence -> (hs `[T, K, L, H]`, per-step (rz, n, gh_n, h - n) kept for
    the backward and the HVP). r and z stay one `[.., 2H]` tensor so the backward and the
    R-passes treat both gates with one sigmoid-derivative op."""
    hsz = w_hh.shape[-1]
    length = gi_all.shape[-2]
    h = gi_all.new_zeros(*gi_all.shape[:-2], hsz)
    hs = _Seq(h, length, hsz, fast)
    steps: list[Step] = []
    for t, gi in enumerate(gi_all.unbind(dim=-2)):
        # h_0 = 0: the first step's hidden projection is the bias alone (no matmul)
        gh = hidden_proj(h, w_hh, b_hh) if t else b_hh.unsqueeze(-2).expand_as(gi)
        gi_rz, gi_n = gi.split([2 * hsz, hsz], dim=-1)
        gh_rz, gh_n = gh.split([2 * hsz, hsz], dim=-1)
        rz = torch.sigmoid_(gi_rz + gh_rz)
        r, z = rz.chunk(2, dim=-1)
        n = _tanh(torch.addcmul(gi_n, r, gh_n))
        h_minus_n = h - n  # kept: the z gate's derivative needs it
        steps.append((rz, n, gh_n, h_minus_n))
        h = hs.put(t, torch.addcmul(n, z, h_minus_n, out=hs.slot(t)))  # n + z (h - n)
    return hs.done(), steps


def _backward_layer(
    d_out: Tensor, steps: list[Step], w_hh: Tensor, fast: bool
) -> tuple[Tensor, Tensor, list[Kept]]:
    """BPTT through one layer given d(loss)/d(h_t) from above -> (dgi_all, dgh_all
    `[T, K, L, 3H]`, per-step (dh, dh (1 - z), pre-sigmoid gate grads) kept for the HVP)."""
    hsz = w_hh.shape[-1]
    length = d_out.shape[-2]
    d_in = d_out.unbind(dim=-2)
    dgh = _Seq(d_in[0], length, 3 * hsz, fast)  # [da_r, da_z, da_n * r]
    dan = _Seq(d_in[0], length, hsz, fast)  # da_n (dgi's n block)
    kept: list[Kept] = [None] * length  # type: ignore[list-item]  # filled t = L-1 .. 0
    dh = d_in[-1]
    for t in range(length - 1, -1, -1):
        rz, n, gh_n, h_minus_n = steps[t]
        r, z = rz.chunk(2, dim=-1)
        dn = torch.addcmul(dh, dh, z, value=-1.0)  # dh (1 - z)
        da_n = dan.put(t, _tb(dn, n, dan.slot(t)))
        g_rz = _pair(da_n, gh_n, dh, h_minus_n, fast)  # grads reaching sigmoid(r), sigmoid(z)
        da_rz = _sb(g_rz, rz, dgh.slot(t, 0, 2 * hsz))
        if fast:
            torch.mul(da_n, r, out=dgh.slot(t, 2 * hsz))
        else:
            dgh.put(t, torch.cat([da_rz, da_n * r], dim=-1))
        kept[t] = (dh, dn, g_rz)
        if t:  # h_{-1} = 0 takes no gradient: the last matmul is skipped
            step_dgh = dgh.slot(t) if fast else dgh.items[t]
            dh = _back_add(torch.addcmul(d_in[t - 1], dh, z), step_dgh, w_hh)
    dgh_all, dan_all = dgh.done(), dan.done()
    dgi_all = torch.cat([dgh_all[..., : 2 * hsz], dan_all], dim=-1)  # one join for all steps
    return dgi_all, dgh_all, kept


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
    # outside autograd every per-step result is written into its slot of one buffer (`out=`)
    fast = not (torch.is_grad_enabled() and any(p.requires_grad for p in params.values()))
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
        hs, steps = _forward_layer(gi_all, w_hh, b_hh, fast)
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
    prob = torch.exp(logp)
    # (prob - onehot(y)) * weight without the one-hot tensor (0.07 vs 0.54 ms at chargru)
    dlogits = (prob * weight).scatter_add_(-1, y.unsqueeze(-1), (-weight).expand_as(y[..., None]))
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
        dgi_all, dgh_all, kept = _backward_layer(d_out, steps, w_hh, fast)
        h_prev_all = torch.cat([torch.zeros_like(hs[..., :1, :]), hs[..., :-1, :]], dim=-2)
        if cache is not None:
            cache["back"][i] = (kept, dgi_all, dgh_all, h_prev_all)
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
