"""Hessian-vector products of the GRU meta-RNN's loss, by hand (no autograd graph).

`gru_grad_hvp(params, x, y, mask, u)` -> (gradient, H u) per task: Pearlmutter's R-operator
pushed through the forward pass and the hand-written backward of `gru_grad.py`, whose
intermediates it reuses. This is what lets second-order MAML on the GRU run the no-autograd
reverse sweep of `pipeline/meta/manual.py` (the MLP's shape): d(outer)/d(theta_k) =
v - H_k (lr * v). Per time step it adds two matmuls (R-forward `Rh W_hh^T`, R-backward
`R dgh W_hh`); every term that does not sit on the recurrence (`h U_hh^T`, `dgh U_hh`, the
weight HVPs) is one bmm over all time steps. Checked against autograd's double backward
(tests/unit/test_gru_hvp.py). Notation: `R<a>` is the directional derivative of `a` along u.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pipeline.models.cells import embed, linear
from pipeline.models.gru_grad import Kept, Step, _back, _back_add, _scatter_rows, gru_loss_and_grad

Params = dict[str, Tensor]


def _rows(a: Tensor, t: int) -> Tensor:
    return a if a.dim() == 3 else a.expand(t, *a.shape)


def _wpair(d: Tensor, a: Tensor, rd: Tensor, ra: Tensor) -> Tensor:
    """HVP of a weight gradient `sum d^T a`: `sum rd^T a + d^T ra` (a bmm and a baddbmm: at
    chargru's W_hh shape 23 ms against 28-35 ms for one bmm over rows joined by `cat`, whose
    two joins copy ~10 MB; bench/RESULTS.md)."""
    t = d.shape[0]

    def rows(x: Tensor) -> Tensor:
        return x.reshape(t, -1, x.shape[-1])

    out = torch.bmm(rows(rd).transpose(1, 2), rows(a))
    return torch.baddbmm(out, rows(d).transpose(1, 2), rows(ra))


def _rsum(d: Tensor) -> Tensor:
    return d.reshape(d.shape[0], -1, d.shape[-1]).sum(1)


def _fwd_add(acc: Tensor, h: Tensor, w: Tensor) -> Tensor:
    """`acc + h @ w^T` in one op (addmm / baddbmm), w shared `[out, in]` or `[T, out, in]`."""
    if w.dim() == 3 and w.stride(0) == 0:
        w = w[0]  # an expand view (theta_0): one mm over all tasks
    if w.dim() == 2:
        flat = torch.addmm(acc.reshape(-1, acc.shape[-1]), h.reshape(-1, h.shape[-1]), w.t())
        return flat.view(acc.shape)
    return torch.baddbmm(acc, h, w.transpose(1, 2))


def _r_forward(
    steps: list[Step],
    gi_r: Tensor,
    hs: Tensor,
    h_prev: Tensor,
    w_hh: Tensor,
    u_hh: Tensor,
    u_bhh: Tensor,
) -> tuple[list[Step], Tensor]:
    """R of one layer's recurrence, given R of its input projection -> per-step R values
    (R[r|z] as one tensor, Rn, R gh_n, R(h - n)) and R hs `[T, K, L, H]`."""
    hsz = w_hh.shape[-1]
    # h_{t-1} U_hh^T + u_b for every t (one bmm), plus R gi's r|z block: then one addmm per
    # step gives [R(pre-sigmoid r|z), R gh_n] with no per-step add
    c_all = linear(h_prev, u_hh, u_bhh)
    c_all[..., : 2 * hsz] += gi_r[..., : 2 * hsz]
    rhs = torch.empty_like(hs)
    rh = None
    out = []
    for t, (rz, n, gh_n, hmn) in enumerate(steps):
        c = c_all.select(-2, t)
        rgh = c if rh is None else _fwd_add(c, rh, w_hh)  # R h_0 = 0: no matmul
        rrz = torch.ops.aten.sigmoid_backward(rgh[..., : 2 * hsz], rz)
        rr, rz_ = rrz.chunk(2, dim=-1)
        r, z = rz.chunk(2, dim=-1)
        rgh_n = rgh[..., 2 * hsz :]
        a = torch.addcmul(gi_r.select(-2, t)[..., 2 * hsz :], rr, gh_n).addcmul_(r, rgh_n)
        rn = torch.ops.aten.tanh_backward.grad_input(a, n, grad_input=a)
        rhmn = rn.neg() if rh is None else rh - rn
        rh = torch.addcmul(rn, rz_, hmn, out=rhs.select(-2, t)).addcmul_(z, rhmn)
        out.append((rrz, rn, rgh_n, rhmn))
    return out, rhs


def _r_step(
    step: Step, rstep: Step, kept: Kept, da_n: Tensor, rdh: Tensor, rdgh: Tensor, rdan: Tensor
) -> None:
    """R of one backward step: writes R dgh_t into `rdgh` and R da_n into `rdan` (slots)."""
    (rz, n, gh_n, hmn), (rrz, rn, rgh_n, rhmn), (dh, dn, g_rz) = step, rstep, kept
    hsz = n.shape[-1]
    r, z = rz.chunk(2, dim=-1)
    rr, rz_ = rrz.chunk(2, dim=-1)
    rdn = torch.addcmul(rdh, rdh, z, value=-1.0).addcmul_(dh, rz_, value=-1.0)
    rda_n = torch.ops.aten.tanh_backward.grad_input(rdn, n, grad_input=rdan)
    rda_n.addcmul_(n * rn, dn, value=-2.0)  # tanh'' term: d(1 - n^2) = -2 n Rn
    rg = torch.empty_like(g_rz)  # R of the grads reaching sigmoid(r), sigmoid(z)
    torch.mul(rda_n, gh_n, out=rg[..., :hsz]).addcmul_(da_n, rgh_n)
    torch.mul(rdh, hmn, out=rg[..., hsz:]).addcmul_(dh, rhmn)
    rda_rz = torch.ops.aten.sigmoid_backward.grad_input(rg, rz, grad_input=rdgh[..., : 2 * hsz])
    w = g_rz * rrz  # sigmoid'' term: d(s (1 - s)) = (1 - 2 s) Rs
    rda_rz.add_(w).addcmul_(w, rz, value=-2.0)
    torch.mul(rda_n, r, out=rdgh[..., 2 * hsz :]).addcmul_(da_n, rr)


def _r_backward(
    steps: list[Step],
    rsteps: list[Step],
    kept: list[Kept],
    dgi_all: Tensor,
    dgh_all: Tensor,
    rd_out: Tensor,
    w_hh: Tensor,
    u_hh: Tensor,
) -> tuple[Tensor, Tensor]:
    """R of one layer's backward -> (R dgi_all, R dgh_all) `[T, K, L, 3H]`."""
    hsz = w_hh.shape[-1]
    length = rd_out.shape[-2]
    du_all = _back(dgh_all, u_hh)  # dgh_t U_hh for every t: one bmm
    # what reaches R dh_{t-1} off the recurrence: R d_out_{t-1} + dgh_t U_hh (one add)
    side = du_all[..., 1:, :] + rd_out[..., :-1, :]
    rdgh = torch.empty_like(dgh_all)
    rdan = torch.empty_like(rd_out)
    rdh = rd_out.select(-2, length - 1)
    for t in range(length - 1, -1, -1):
        r_slot = rdgh.select(-2, t)
        da_n = dgi_all.select(-2, t)[..., 2 * hsz :]
        _r_step(steps[t], rsteps[t], kept[t], da_n, rdh, r_slot, rdan.select(-2, t))
        if t:  # R dh_{t-1} = R dh z + dh Rz + side + R dgh_t W_hh
            z, rz_ = steps[t][0][..., hsz:], rsteps[t][0][..., hsz:]
            acc = torch.addcmul(side.select(-2, t - 1), rdh, z).addcmul_(kept[t][0], rz_)
            rdh = _back_add(acc, r_slot, w_hh)
    return torch.cat([rdgh[..., : 2 * hsz], rdan], dim=-1), rdgh


def _head(params: Params, u: Params, c: dict, rfeat: Tensor, kind: str, hv: Params):
    """R of the head and loss -> R d(feature) (lm: per position; classify: last position)."""
    w_o = params["head.weight"]
    rlogits = linear(rfeat, w_o, None) + linear(c["feat"], u["head.weight"], u["head.bias"])
    prob = c["prob"]
    rdl = prob * (rlogits - (prob * rlogits).sum(-1, keepdim=True)) * c["weight"]
    hv["head.weight"] = _wpair(c["dlogits"], c["feat"], rdl, rfeat)
    hv["head.bias"] = _rsum(rdl)
    return _back(rdl, w_o) + _back(c["dlogits"], u["head.weight"])


def gru_grad_hvp(
    params: Params,
    x: Tensor,
    y: Tensor,
    mask: Tensor,
    u: Params,
    *,
    layers: int,
    kind: str,
    need_grad: bool = True,
    cache: dict | None = None,
) -> tuple[Params, Params]:
    """Per-task gradient (empty unless need_grad) and Hessian-vector product with `u` (every
    parameter; `u` task-batched `[T, ...]`, params shared or task-batched). `cache`: what
    `gru_loss_and_grad(..., names=every parameter, cache=...)` left at these same params and
    data (the inner step's own pass): then the forward and backward are not run again."""
    c: dict = cache if cache else {}
    if not c:
        names = set(params) if need_grad else {"embed.weight"}  # backward runs to the bottom
        gru_loss_and_grad(params, x, y, mask, layers=layers, kind=kind, names=names, cache=c)
    g = c["grads"] if need_grad else {}
    hv: Params = {}
    rsteps_all, rhs_all = _r_layers(params, u, c, x, layers)
    if kind == "lm":
        rd_out = _head(params, u, c, rhs_all[-1], kind, hv)
    else:  # classify: only the last valid position of each sequence feeds the head
        idx = c["idx"]
        rdf = _head(params, u, c, rhs_all[-1].gather(-2, idx).squeeze(-2), kind, hv)
        rd_out = torch.zeros_like(rhs_all[-1]).scatter(-2, idx, rdf[..., None, :])
    for i in range(layers - 1, -1, -1):
        rd_out = _r_layer_back(params, u, c, x, i, rsteps_all[i], rhs_all, rd_out, hv)
    return g, hv


def _r_layers(params: Params, u: Params, c: dict, x: Tensor, layers: int):
    """R-forward through every layer -> (per-layer R step values, per-layer R hidden states)."""
    t = x.shape[0]
    table, u_table = params["embed.weight"], u["embed.weight"]
    if c["folded"]:  # gi = P[x], P = E W^T + b: R P = U_E W^T + E U_W^T + u_b, then gather
        # (u's bias added apart: `linear` reads an expand-view w's bias as shared)
        w0, uw0 = params["rnn.0.w_ih"], u["rnn.0.w_ih"]
        rp = linear(u_table, w0, None) + linear(_rows(table, t), uw0, None)
        r_in = embed(rp + u["rnn.0.b_ih"][:, None, :], x)
    else:
        r_in = embed(u_table, x)  # R of the embedded sequence
    rsteps_all, rhs_all = [], []
    for i in range(layers):
        pre = f"rnn.{i}."
        layer_in, hs, steps = c["layers"][i]
        if i > 0 or not c["folded"]:
            r_in = linear(r_in, params[pre + "w_ih"], None) + linear(
                layer_in, u[pre + "w_ih"], u[pre + "b_ih"]
            )
        w_hh, u_hh, u_bhh = params[pre + "w_hh"], u[pre + "w_hh"], u[pre + "b_hh"]
        h_prev = c["back"][i][3]  # the backward's [0, h_0 .. h_{L-2}]
        rsteps, rhs = _r_forward(steps, r_in, hs, h_prev, w_hh, u_hh, u_bhh)
        rsteps_all.append(rsteps)
        rhs_all.append(rhs)
        r_in = rhs
    return rsteps_all, rhs_all


def _r_layer_back(params, u, c, x, i, rsteps, rhs_all, rd_out, hv) -> Tensor | None:
    """R-backward through layer i: fills its HVPs in `hv`; -> R d(layer input) (or None)."""
    t = x.shape[0]
    pre = f"rnn.{i}."
    table, u_table = params["embed.weight"], u["embed.weight"]
    w_ih, w_hh = params[pre + "w_ih"], params[pre + "w_hh"]
    layer_in, hs, steps = c["layers"][i]
    kept, dgi_all, dgh_all, h_prev = c["back"][i]
    rdgi, rdgh = _r_backward(steps, rsteps, kept, dgi_all, dgh_all, rd_out, w_hh, u[pre + "w_hh"])
    rh_prev = torch.cat([torch.zeros_like(rhs_all[i][..., :1, :]), rhs_all[i][..., :-1, :]], -2)
    hv[pre + "w_hh"] = _wpair(dgh_all, h_prev, rdgh, rh_prev)
    hv[pre + "b_hh"] = _rsum(rdgh)
    hv[pre + "b_ih"] = _rsum(rdgi)
    if i == 0 and c["folded"]:  # back through the gather to P, then to E and W
        d_proj = c["d_proj"]
        rd_proj = _scatter_rows(rdgi, x, table.shape[-2])
        hv[pre + "w_ih"] = _wpair(d_proj, _rows(table, t), rd_proj, u_table)
        hv["embed.weight"] = _back(rd_proj, w_ih) + _back(d_proj, u[pre + "w_ih"])
        return None
    r_layer_in = rhs_all[i - 1] if i > 0 else embed(u_table, x)
    hv[pre + "w_ih"] = _wpair(dgi_all, layer_in, rdgi, r_layer_in)
    rd_in = _back(rdgi, w_ih) + _back(dgi_all, u[pre + "w_ih"])
    if i == 0:
        hv["embed.weight"] = _scatter_rows(rd_in, x, table.shape[-2])
    return rd_in
