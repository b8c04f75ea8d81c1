"""The byte-level meta-RNN (`pipeline/models/meta_rnn.py`): vmap-safe, same as the batched path."""

import torch
from torch.func import functional_call, vmap

from tests.unit.meta_cases import seq_batch, tiny_rnn


def test_model_is_vmap_safe_and_matches_the_batched_path():
    model = tiny_rnn("lm")
    batch = seq_batch("lm", t=4)
    params = dict(model.named_parameters())
    mapped = vmap(lambda x, m: functional_call(model, params, (x, m)))(
        batch.support.x, batch.support.mask
    )
    torch.testing.assert_close(
        mapped, model.functional(params, batch.support.x, batch.support.mask)
    )
