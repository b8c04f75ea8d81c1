"""Bank warm starts with fallback (`pipeline/bank/warm_start.py`)."""

import numpy as np
import pytest
import torch

from pipeline.bank.service import BankService
from pipeline.bank.warm_start import (
    adapt_with_bank,
    flatten,
    flatten_batched,
    unflatten,
    warm_start,
)
from pipeline.config import BankConfig, DataConfig, ModelConfig
from pipeline.data.episodes import Split, encode
from pipeline.meta.descriptor import describe
from pipeline.models import build_model

EN = ["the", "and", "of", "to", "in", "that", "is", "was"]


EN2 = ["with", "for", "this", "have", "from", "they", "which", "there"]


RU = ["и", "в", "не", "на", "что", "он", "как", "это"]


def _model():
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden=32, embed=8), DataConfig(max_len=12))
    return model, {k: v.detach() for k, v in model.named_parameters()}


def _support(*word_lists):
    xs, ys, ms = zip(*(encode(w, 12) for w in word_lists), strict=True)
    t = lambda a: torch.from_numpy(np.stack(a))  # noqa: E731
    return Split(t(xs), t(ys), t(ms))


def test_flatten_unflatten_round_trip():
    model, params = _model()
    back = unflatten(flatten(params), params)
    for k in params:
        torch.testing.assert_close(back[k], params[k])


def _bank(**kw) -> BankService:
    return BankService(BankConfig(descriptor="ngram", **kw))


def test_empty_or_distant_bank_falls_back_to_meta_init_exactly():
    from pipeline.meta.inner import adapt

    model, params = _model()
    sup = _support(RU)
    bank = _bank(threshold=0.95)
    en = _support(EN)
    bank.put(
        {
            "keys": ["en"],
            "descriptor": describe(model, params, en, kind="ngram"),
            "params": flatten(params)[None] + 1.0,
        }
    )
    for query in (None, bank.query):  # no bank at all, and a bank with nothing close
        got, info = adapt_with_bank(model, params, sup, cfg=bank.cfg, query=query, steps=2, lrs=0.1)
        assert info.sources == ["meta-init"]
        want = adapt(params, sup, model=model, steps=2, lrs=0.1, first_order=True)
        for k in params:
            torch.testing.assert_close(got[k], want[k].detach())


def test_close_task_starts_from_its_stored_adapted_params():
    model, params = _model()
    bank = _bank(threshold=0.9)
    stored = flatten(params) + 0.5
    d = describe(model, params, _support(EN), kind="ngram")
    bank.put({"keys": ["en"], "descriptor": d, "params": stored[None]})
    start, info = warm_start(model, params, _support(EN), cfg=bank.cfg, query=bank.query)
    assert info.sources == ["bank:en"] and info.best_sims[0] == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(flatten_batched(start)[0], stored, rtol=1e-6)


def test_weighted_blend_mixes_hits_above_threshold_by_similarity():
    model, params = _model()
    bank = _bank(threshold=-1.0, top_k=2, blend="weighted")
    base = flatten(params)
    q = describe(model, params, _support(EN), kind="ngram")
    other = describe(model, params, _support(EN2), kind="ngram")
    bank.put(
        {
            "keys": ["a", "b"],
            "descriptor": np.concatenate([q, other]),
            "params": np.stack([base + 1.0, base - 1.0]),
        }
    )
    start, info = warm_start(model, params, _support(EN), cfg=bank.cfg, query=bank.query)
    s = float(q[0] @ other[0])
    w_a = 1.0 / (1.0 + s)
    got = flatten_batched(start)[0]
    np.testing.assert_allclose(got - base, np.full_like(base, w_a - (1 - w_a)), atol=1e-5)
    assert info.sources == ["bank:a,b"]


def test_flat_order_does_not_depend_on_dict_order():
    # a checkpoint read back (safetensors) lists names sorted; a fresh model does not
    model, params = _model()
    shuffled = dict(reversed(list(params.items())))
    np.testing.assert_array_equal(flatten(params), flatten(shuffled))
    back = unflatten(flatten(params), shuffled)
    for k in params:
        torch.testing.assert_close(back[k], params[k])
