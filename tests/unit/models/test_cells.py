"""Hand-written GRU/LSTM cells: same numbers as torch's cells, vmap-safe, double-backward-safe."""

import torch
from torch import nn

from pipeline.models import cells

torch.set_num_threads(1)  # tiny tensors: threads only add waiting on a shared 2-core box


def _copy(cell: nn.Module) -> tuple[torch.Tensor, ...]:
    return tuple(t.detach() for t in (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh))


def test_gru_cell_matches_nn_grucell():
    torch.manual_seed(0)
    ref = nn.GRUCell(7, 11)
    x, h = torch.randn(5, 7), torch.randn(5, 11)
    ours = cells.gru_cell(x, h, *_copy(ref))
    torch.testing.assert_close(ours, ref(x, h), rtol=1e-6, atol=1e-6)


def test_lstm_cell_matches_nn_lstmcell():
    torch.manual_seed(0)
    ref = nn.LSTMCell(7, 11)
    x, h, c = torch.randn(5, 7), torch.randn(5, 11), torch.randn(5, 11)
    h2, c2 = cells.lstm_cell(x, h, c, *_copy(ref))
    rh, rc = ref(x, (h, c))
    torch.testing.assert_close(h2, rh, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(c2, rc, rtol=1e-6, atol=1e-6)


def test_sequences_match_nn_gru_and_lstm_over_time():
    torch.manual_seed(0)
    x = torch.randn(4, 9, 6)
    for kind, ref in (
        ("gru", nn.GRU(6, 8, batch_first=True)),
        ("lstm", nn.LSTM(6, 8, batch_first=True)),
    ):
        w = (ref.weight_ih_l0, ref.weight_hh_l0, ref.bias_ih_l0, ref.bias_hh_l0)
        ours = cells.SEQUENCE[kind](x, *(t.detach() for t in w))
        torch.testing.assert_close(ours, ref(x)[0], rtol=1e-5, atol=1e-6)


def test_task_batched_weights_equal_per_task_runs():
    # weights [T, 3H, H] with inputs [T, B, L, in]: one bmm per step, same as each task alone
    torch.manual_seed(0)
    t, hsz = 3, 5
    w = [
        torch.randn(t, 3 * hsz, 4),
        torch.randn(t, 3 * hsz, hsz),
        torch.randn(t, 3 * hsz),
        torch.randn(t, 3 * hsz),
    ]
    x = torch.randn(t, 2, 6, 4)
    batched = cells.gru_sequence(x, *w)
    for i in range(t):
        torch.testing.assert_close(
            batched[i], cells.gru_sequence(x[i], *(a[i] for a in w)), rtol=1e-5, atol=1e-6
        )


def test_cells_run_under_vmap_and_grad():
    torch.manual_seed(0)
    ref = nn.GRUCell(3, 4)
    w = _copy(ref)
    x = torch.randn(6, 2, 5, 3)  # 6 tasks

    def loss(w_ih, xi):
        return cells.gru_sequence(xi, w_ih, *w[1:]).pow(2).sum()

    g = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(w[0], x)
    for i in range(6):
        torch.testing.assert_close(g[i], torch.func.grad(loss)(w[0], x[i]), rtol=1e-5, atol=1e-6)


def test_double_backward_through_both_cells():
    torch.manual_seed(0)
    for kind in ("gru", "lstm"):
        g = cells.GATES[kind]
        w = [
            torch.randn(g * 3, 2, dtype=torch.float64, requires_grad=True),
            torch.randn(g * 3, 3, dtype=torch.float64, requires_grad=True),
            torch.randn(g * 3, dtype=torch.float64),
            torch.randn(g * 3, dtype=torch.float64),
        ]
        x = torch.randn(2, 4, 2, dtype=torch.float64)

        def f(w_ih, w_hh, kind=kind, w=w, x=x):
            return cells.SEQUENCE[kind](x, w_ih, w_hh, w[2], w[3]).sum()

        assert torch.autograd.gradgradcheck(f, (w[0], w[1]))
