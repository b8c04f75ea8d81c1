"""Task descriptors (`pipeline/meta/descriptor.py`): deterministic, fixed length, unit norm."""

import numpy as np
import pytest
import torch

from pipeline.config import DataConfig, ModelConfig
from pipeline.data.episodes import Split, encode
from pipeline.meta.descriptor import KINDS, describe, descriptor_dim, is_novel
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


@pytest.mark.parametrize("kind", KINDS)
def test_descriptor_is_deterministic_fixed_length_and_unit_norm(kind):
    model, params = _model()
    sup = _support(EN, RU)
    a, b = describe(model, params, sup, kind=kind), describe(model, params, sup, kind=kind)
    assert a.shape == (2, descriptor_dim(model, kind)) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    shuffled = _support(EN[::-1], RU[::-1])  # a set: the order of support words is irrelevant
    np.testing.assert_allclose(describe(model, params, shuffled, kind=kind), a, atol=1e-5)


def test_ngram_descriptor_puts_same_language_closer_than_another_script():
    model, params = _model()
    d = describe(model, params, _support(EN, EN2, RU), kind="ngram")
    assert d[0] @ d[1] > d[0] @ d[2] + 0.2


def test_novelty_is_best_similarity_below_threshold():
    assert is_novel(None, 0.9) and is_novel(0.89, 0.9) and not is_novel(0.9, 0.9)


def test_auto_descriptor_is_ngram_for_bytes_and_hidden_for_regression():
    model, params = _model()
    sup = _support(EN, RU)
    np.testing.assert_array_equal(
        describe(model, params, sup, kind="auto"), describe(model, params, sup, kind="ngram")
    )
    torch.manual_seed(0)
    mlp = build_model(ModelConfig(kind="mlp", hidden=8), DataConfig(episode="regression"))
    mp = {k: v.detach() for k, v in mlp.named_parameters()}
    reg = Split(torch.randn(2, 5, 1), torch.randn(2, 5, 1), torch.ones(2, 5))
    assert describe(mlp, mp, reg, kind="auto").shape == (2, descriptor_dim(mlp, "auto"))
    with pytest.raises(ValueError, match="needs byte sequences"):
        describe(mlp, mp, reg, kind="ngram")
