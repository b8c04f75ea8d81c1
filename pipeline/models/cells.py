"""Hand-written GRU and LSTM cells from plain torch ops.

Why not `nn.GRU`/`nn.LSTM`: cuDNN RNNs have no double backward (second-order MAML breaks
on GPU) and `torch.func.vmap` fails on `aten::gru`/`aten::lstm` in torch 2.13. These
functions use only matmul, elementwise ops and `unbind`, so they work under `vmap`,
`grad`, double backward, on CPU and CUDA.

Speed: the input projection `x @ W_ih^T + b_ih` does not depend on the hidden state, so
it is computed for every time step in ONE matmul before the recurrence; inside the loop
only `h @ W_hh^T` remains, with the gates fused into one matmul (3H or 4H wide).

Weights may carry a leading task dimension (`[T, 3H, H]`) while inputs are `[T, B, ...]`:
then every matmul is one `bmm` over the whole meta-batch (no vmap needed). Unbatched
weights (`[3H, H]`) broadcast over any leading input dims. Gate order follows PyTorch
(GRU: r, z, n; LSTM: i, f, g, o) so weights can be copied from `nn.GRUCell`/`nn.LSTMCell`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def linear(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """`x @ w^T + b` for x `[..., N, in]`; w `[out, in]` or task-batched `[T, out, in]`.

    Task-batched weights need x with a matching leading T: `[T, ..., N, in]`; middle dims
    are flattened so the product is one bmm.
    """
    if w.dim() == 3 and w.stride(0) == 0 and not w.requires_grad:
        # an expand view outside autograd (no per-task gradient wanted): every task has the
        # same weights, so one mm over all tasks beats a bmm
        w = w[0]
        b = None if b is None else b[0]
    if w.dim() == 2:
        y = x @ w.transpose(0, 1)
        return y if b is None else y + b
    t = w.shape[0]
    flat = x.reshape(t, -1, x.shape[-1])
    if b is None:
        y = torch.bmm(flat, w.transpose(1, 2))
    else:
        y = torch.baddbmm(b.unsqueeze(1), flat, w.transpose(1, 2))
    return y.reshape(*x.shape[:-1], w.shape[1])


def hidden_proj(h: Tensor, w_hh: Tensor, b_hh: Tensor) -> Tensor:
    # h: [T, B, H] with batched weights, or [..., H] with shared weights.
    if w_hh.dim() == 3 and w_hh.stride(0) == 0 and not w_hh.requires_grad:
        w_hh, b_hh = w_hh[0], b_hh[0]  # expand views of shared weights: one mm (as `linear`)
    if w_hh.dim() == 2:
        return h @ w_hh.t() + b_hh
    return torch.baddbmm(b_hh.unsqueeze(1), h, w_hh.transpose(1, 2))


def gru_step(gi: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor) -> Tensor:
    """One GRU step given the precomputed input projection `gi = x W_ih^T + b_ih` `[..., 3H]`."""
    gh = hidden_proj(h, w_hh, b_hh)
    hsz = h.shape[-1]
    # split (backward: one cat) rather than slicing (backward: zeros + copy per slice)
    gi_rz, gi_n = gi.split([2 * hsz, hsz], dim=-1)
    gh_rz, gh_n = gh.split([2 * hsz, hsz], dim=-1)
    r, z = torch.sigmoid(gi_rz + gh_rz).chunk(2, dim=-1)
    n = torch.tanh(gi_n + r * gh_n)
    return n + z * (h - n)  # == (1 - z) * n + z * h, one op fewer


def lstm_step(
    gi: Tensor, h: Tensor, c: Tensor, w_hh: Tensor, b_hh: Tensor
) -> tuple[Tensor, Tensor]:
    """One LSTM step given the precomputed input projection `gi` `[..., 4H]`."""
    gates = gi + hidden_proj(h, w_hh, b_hh)
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def gru_cell(
    x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor
) -> Tensor:
    """Same maths as `nn.GRUCell` (single step, shared weights)."""
    return gru_step(x @ w_ih.t() + b_ih, h, w_hh, b_hh)


def lstm_cell(
    x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor
) -> tuple[Tensor, Tensor]:
    """Same maths as `nn.LSTMCell` (single step, shared weights)."""
    return lstm_step(x @ w_ih.t() + b_ih, h, c, w_hh, b_hh)


def gru_recurrence(gi_all: Tensor, w_hh: Tensor, b_hh: Tensor) -> Tensor:
    """GRU over precomputed input projections `gi_all` `[..., L, 3H]`, h0 = 0 -> `[..., L, H]`."""
    hsz = w_hh.shape[-1]
    h = gi_all.new_zeros(*gi_all.shape[:-2], hsz)
    outs = []
    for gi in gi_all.unbind(dim=-2):  # unbind beats x[..., t, :] indexing (measured)
        h = gru_step(gi, h, w_hh, b_hh)
        outs.append(h)
    return torch.stack(outs, dim=-2)


def lstm_recurrence(gi_all: Tensor, w_hh: Tensor, b_hh: Tensor) -> Tensor:
    """LSTM over precomputed input projections `[..., L, 4H]` from h0 = c0 = 0 -> `[..., L, H]`."""
    hsz = w_hh.shape[-1]
    h = gi_all.new_zeros(*gi_all.shape[:-2], hsz)
    c = h
    outs = []
    for gi in gi_all.unbind(dim=-2):
        h, c = lstm_step(gi, h, c, w_hh, b_hh)
        outs.append(h)
    return torch.stack(outs, dim=-2)


def gru_sequence(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor) -> Tensor:
    """Run a GRU over x `[..., L, in]` from h0 = 0; returns every hidden state `[..., L, H]`."""
    return gru_recurrence(linear(x, w_ih, b_ih), w_hh, b_hh)  # one matmul for all steps


def lstm_sequence(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor) -> Tensor:
    """Run an LSTM over x `[..., L, in]` from h0 = c0 = 0; returns hidden states `[..., L, H]`."""
    return lstm_recurrence(linear(x, w_ih, b_ih), w_hh, b_hh)


def embed(table: Tensor, x: Tensor) -> Tensor:
    """Rows of `table` (`[V, D]`, or task-batched `[T, V, D]`) at ids x `[T, ...]`."""
    if table.dim() == 3:  # offset each task's ids into its own rows of one flat table
        t, v, d = table.shape
        offs = torch.arange(t, device=x.device).mul_(v).view(t, *([1] * (x.dim() - 1)))
        return F.embedding(x + offs, table.reshape(t * v, d))
    return F.embedding(x, table)


def fold_embedding(table: Tensor, x: Tensor) -> bool:
    """Project the vocabulary table instead of the sequence when it has fewer rows."""
    return table.shape[-2] < x[0].numel()


def input_projection(params: dict[str, Tensor], x: Tensor) -> Tensor:
    """Layer 0's `embed(x) @ W_ih^T + b_ih` `[T, K, L, G*H]`. Embedding then a linear map is
    one linear map, so when V < K*L it is cheaper (same numbers) to project the V table rows
    once and gather: `(E W^T + b)[x]` (vocab 64 vs 512 positions: 8x fewer FLOPs)."""
    table, w, b = params["embed.weight"], params["rnn.0.w_ih"], params["rnn.0.b_ih"]
    if fold_embedding(table, x):
        if w.dim() == 3 and table.dim() == 2:
            table = table.expand(w.shape[0], *table.shape)
        return embed(linear(table, w, b), x)
    return linear(embed(table, x), w, b)


GATES = {"gru": 3, "lstm": 4}
SEQUENCE = {"gru": gru_sequence, "lstm": lstm_sequence}
RECURRENCE = {"gru": gru_recurrence, "lstm": lstm_recurrence}
