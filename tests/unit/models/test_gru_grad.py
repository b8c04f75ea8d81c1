"""The hand-written GRU BPTT (`pipeline/models/gru_grad.py`) equals autograd."""

import pytest
import torch

from pipeline.meta import inner
from pipeline.meta.losses import model_loss
from pipeline.models.meta_rnn import MetaRNN
from tests.unit.meta_cases import seq_batch


@pytest.mark.parametrize("task", ["lm", "classify"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("vocab", [11, 40], ids=["folded-embedding", "embedding"])
def test_hand_written_gru_bptt_equals_autograd(task, layers, vocab):
    # vocab 11 < K*L = 24 positions: layer 0 projects the table and gathers; 40: embeds first
    torch.manual_seed(0)
    model = MetaRNN(cell="gru", vocab=vocab, embed=4, hidden=6, layers=layers, task=task, n_way=3)
    batch = seq_batch(task, vocab=vocab)
    shared = dict(model.named_parameters())
    for names in (set(shared), set(model.head_names)):  # full MAML and ANIL's head only
        p = inner.batch_params(model, shared, 3, names)
        s = batch.support
        loss, g = model.loss_and_grad(p, s.x, s.y, s.mask, names)
        ref_loss = model_loss(model, p, s)
        ref = torch.autograd.grad(ref_loss.sum(), [p[k] for k in names])
        torch.testing.assert_close(loss, ref_loss)
        assert g.keys() == names
        for k, r in zip(names, ref, strict=True):
            torch.testing.assert_close(g[k], r, rtol=1e-5, atol=1e-6, msg=k)
        with torch.no_grad():  # outside autograd: the in-place path (steps written with out=)
            loss2, g2 = model.loss_and_grad(p, s.x, s.y, s.mask, names)
        torch.testing.assert_close(loss2, loss.detach())
        for k in names:
            torch.testing.assert_close(g2[k], g[k].detach(), rtol=1e-5, atol=1e-6, msg=k)
