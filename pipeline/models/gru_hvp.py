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
from pipeline.models.gru_grad import _back, _scatter_rows, gru_loss_and_grad

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


def _r_forward(steps, gi_r: Tensor, hs: Tensor, w_hh: Tensor, u_hh: Tensor, u_bhh: Tensor):
    """R of one layer's recurrence, given R of its input projection -> per-step R values."""
    hsz = w_hh.shape[-1]
    h_prev = torch.cat([torch.zeros_like(hs[..., :1, :]), hs[..., :-1, :]], dim=-2)
    hu_all = linear(h_prev, u_hh, u_bhh)  # h_{t-1} U_hh^T + u_b for every t: one bmm
    rh = torch.zeros_like(hs[..., 0, :])
    out, rhs = [], []
    for (r, z, n, gh_n, hmn), rgi, hu in zip(
        steps, gi_r.unbind(-2), hu_all.unbind(-2), strict=True
    ):
        rgh = hu + linear(rh, w_hh, None)
        rgi_rz, rgi_n = rgi.split([2 * hsz, hsz], dim=-1)
        rgh_rz, rgh_n = rgh.split([2 * hsz, hsz], dim=-1)
        ra_r, ra_z = (rgi_rz + rgh_rz).chunk(2, dim=-1)
        rr = torch.ops.aten.sigmoid_backward(ra_r, r)
        rz = torch.ops.aten.sigmoid_backward(ra_z, z)
        rn = torch.ops.aten.tanh_backward(rgi_n + rr * gh_n + r * rgh_n, n)
        rhmn = rh - rn
        out.append((rr, rz, rn, rgh_n, rhmn))
        rh = rn + rz * hmn + z * rhmn
        rhs.append(rh)
    return out, torch.stack(rhs, dim=-2)


def _r_backward(steps, rsteps, dhs, dgh_all: Tensor, rd_out: Tensor, w_hh: Tensor, u_hh: Tensor):
    """R of one layer's backward -> (R dgi_all, R dgh_all) `[T, K, L, 3H]`."""
    du_all = _back(dgh_all, u_hh)  # dgh_t U_hh for every t: one bmm
    rdh = None
    rdgis, rdghs = [], []
    for (r, z, n, gh_n, hmn), (rr, rz, rn, rgh_n, rhmn), dh, rd_t, du in zip(
        reversed(steps),
        reversed(rsteps),
        reversed(dhs),
        reversed(rd_out.unbind(-2)),
        reversed(du_all.unbind(-2)),
        strict=True,
    ):
        rdh = rd_t if rdh is None else rdh + rd_t
        dn = dh - dh * z
        da_n = torch.ops.aten.tanh_backward(dn, n)
        dr = da_n * gh_n
        dz = dh * hmn
        rdn = rdh - rdh * z - dh * rz
        rda_n = torch.ops.aten.tanh_backward(rdn, n) - 2.0 * n * rn * dn
        rda_r = torch.ops.aten.sigmoid_backward(rda_n * gh_n + da_n * rgh_n, r) + dr * rr * (
            1.0 - 2.0 * r
        )
        rda_z = torch.ops.aten.sigmoid_backward(rdh * hmn + dh * rhmn, z) + dz * rz * (
            1.0 - 2.0 * z
        )
        rdgis.append(torch.cat([rda_r, rda_z, rda_n], dim=-1))
        rdgh = torch.cat([rda_r, rda_z, rda_n * r + da_n * rr], dim=-1)
        rdghs.append(rdgh)
        rdh = rdh * z + dh * rz + du + _back(rdgh, w_hh)
    return torch.stack(rdgis[::-1], dim=-2), torch.stack(rdghs[::-1], dim=-2)


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
        rsteps, rhs = _r_forward(steps, r_in, hs, w_hh, u_hh, u_bhh)
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
    dhs, dgi_all, dgh_all, h_prev = c["back"][i]
    rdgi, rdgh = _r_backward(steps, rsteps, dhs, dgh_all, rd_out, w_hh, u[pre + "w_hh"])
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
