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
    with_entry_support,
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
    """The similarity rule alone (raw cosine, no probe): what these tests pin down."""
    rule = {"similarity": "raw", "select": "similarity", "top_k": 1}
    return BankService(BankConfig(**{"descriptor": "ngram", **rule, **kw}))


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


@pytest.mark.parametrize("on_disk", [False, True])
def test_close_task_starts_from_its_stored_adapted_params(tmp_path, on_disk):
    """The warm start is what was put, up to the float16 rounding of its delta from the base
    (the meta-init the put sent), whether the row is in memory or read back from disk."""
    from tests.unit.bank.test_store import assert_within_delta_rounding

    model, params = _model()
    kw = {"snapshot_uri": str(tmp_path / "bank"), "param_cache_mb": 0} if on_disk else {}
    bank = _bank(threshold=0.9, **kw)
    base = flatten(params)
    rng = np.random.default_rng(0)
    stored = base + (0.05 * rng.standard_normal(base.shape)).astype(np.float32)
    d = describe(model, params, _support(EN), kind="ngram")
    bank.put({"keys": ["en"], "descriptor": d, "params": stored[None], "base": base})
    start, info = warm_start(model, params, _support(EN), cfg=bank.cfg, query=bank.query)
    assert info.sources == ["bank:en"] and info.best_sims[0] == pytest.approx(1.0, abs=1e-5)
    got = flatten_batched(start)[0]
    assert_within_delta_rounding(got, stored, base)
    assert not np.array_equal(got, stored)  # float16 really was used
    if on_disk:
        kw["snapshot_uri"] = str(tmp_path / "exact")
    exact = _bank(threshold=0.9, dtype="float32", **kw)  # the float32 bank: bit for bit
    exact.put({"keys": ["en"], "descriptor": d, "params": stored[None], "base": base})
    start, _ = warm_start(model, params, _support(EN), cfg=exact.cfg, query=exact.query)
    np.testing.assert_array_equal(flatten_batched(start)[0], stored)


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
            "base": base,  # the deltas +-1 are exact in float16
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


# ---- support size: calibrated similarity, and the support-loss probe ----------------------
def _pseudo_language(seed: int, n: int) -> list[str]:
    """n distinct words over a skewed 12-letter alphabet: one fixed 'language' per seed."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijkl"))
    p = rng.dirichlet(np.full(12, 0.5))
    words: list[str] = []
    while len(words) < n:
        w = "".join(rng.choice(letters, size=rng.integers(3, 9), p=p))
        if w not in words:
            words.append(w)
    return words


def test_calibrated_similarity_drifts_less_with_support_size_than_the_raw_cosine():
    from pipeline.meta.descriptor import calibrated_similarity, entry_reliability, reliability

    model, params = _model()
    raw, cal = {8: [], 64: []}, {8: [], 64: []}
    for seed in (5, 6, 7):  # three pseudo-languages, each against its own K=256 entry
        words = _pseudo_language(seed, 512)
        ref = describe(model, params, _support(words[:256]), kind="ngram")[0]
        for k in raw:
            sup = _support(*(words[256 + i * k : 256 + (i + 1) * k] for i in range(4)))
            d = describe(model, params, sup, kind="ngram")
            rel = reliability(model, params, sup, kind="ngram")
            assert (rel > 0).all() and (rel <= 1).all()
            raw[k] += list(d @ ref)
            cal[k] += list(calibrated_similarity(d @ ref, rel, entry_reliability(rel, k, 256)))
    drift = lambda v: float(np.mean(v[64]) - np.mean(v[8]))  # noqa: E731
    assert drift(raw) > 0.05  # the problem: the same language looks less alike at K=8
    assert abs(drift(cal)) < 0.3 * drift(raw)


def test_entry_reliability_follows_the_support_size():
    from pipeline.meta.descriptor import entry_reliability

    rel_q = np.array([0.6])
    np.testing.assert_allclose(entry_reliability(rel_q, 8, 8), rel_q, rtol=1e-6)
    assert entry_reliability(rel_q, 8, 10**6)[0] == pytest.approx(1.0, abs=1e-4)
    assert entry_reliability(rel_q, 8, 32)[0] > rel_q[0]


def _fit(model, params, sup, steps=30):
    from pipeline.meta.inner import adapt

    p = adapt(params, sup, model=model, steps=steps, lrs=0.5, first_order=True)
    return {k: v.detach()[0] for k, v in p.items()}


def test_probe_keeps_the_meta_init_when_the_matching_entry_is_bad():
    """A stored entry whose descriptor matches exactly but whose parameters are wrecked: the
    similarity rule takes it; the probe (held-out support loss) stays on the meta-init."""
    model, params = _model()
    sup = _support(_pseudo_language(2, 16))
    d = describe(model, params, sup, kind="ngram")
    wrecked = flatten(params) + np.random.default_rng(0).normal(0, 3, flatten(params).shape)
    for select, want in (("similarity", "bank:xx"), ("probe", "meta-init")):
        bank = _bank(threshold=0.5, select=select, similarity="calibrated")
        bank.put({"keys": ["xx"], "descriptor": d, "params": wrecked[None].astype(np.float32)})
        _, info = warm_start(model, params, sup, cfg=bank.cfg, query=bank.query, lrs=0.1)
        assert info.sources == [want]
        assert info.calibrated_sims[0] > info.best_sims[0] - 1e-6  # corrected upwards


def test_probe_picks_the_entry_adapted_to_the_task_over_a_worse_relative():
    model, params = _model()
    words = _pseudo_language(3, 96)
    own, other = _support(words[:64]), _support(_pseudo_language(4, 64))
    sup = _support(words[64:80])
    good, bad = _fit(model, params, own), _fit(model, params, other)
    bank = _bank(threshold=-1.0, top_k=3, select="probe", similarity="calibrated")
    q = describe(model, params, sup, kind="ngram")
    bank.put(
        {
            "keys": ["bad", "good"],
            "descriptor": np.concatenate([q, q]),  # the descriptor cannot tell them apart
            "params": np.stack([flatten(bad), flatten(good)]),
            "support": [64, 64],
        }
    )
    got, info = adapt_with_bank(
        model, params, sup, cfg=bank.cfg, query=with_entry_support(bank), steps=1, lrs=0.1
    )
    assert info.sources == ["bank:good"]
    assert set(info.probe[0]) == {"meta-init", "bank:bad", "bank:good", "bank:bad,good"}
    assert info.probe[0]["bank:good"] == min(info.probe[0].values())


def test_novelty_flag_and_the_probe_gate():
    """A stored task in another script is not related (novel), whatever the probe does; with
    probe_gate it is not even probed, without it the probe weighs it against the meta-init."""
    model, params = _model()
    sup = _support(RU)
    en = describe(model, params, _support(EN, EN2), kind="ngram")[:1]
    for gate, probed in ((True, False), (False, True)):
        bank = _bank(threshold=0.83, select="probe", similarity="calibrated", probe_gate=gate)
        bank.put({"keys": ["en"], "descriptor": en, "params": flatten(params)[None] + 0.01})
        _, info = warm_start(model, params, sup, cfg=bank.cfg, query=bank.query, lrs=0.1)
        assert info.novel == [True]
        assert bool(info.probe[0]) == probed
        if gate:
            assert info.sources == ["meta-init"]


def test_probe_steps_stay_inside_inner_max_step_norm():
    """The probe adapts with the inner loop's trust region: with a tiny region its losses are
    those of the unmoved start (as with lr 0), while a free probe step lowers them."""
    from pipeline.bank.warm_start import probe_losses

    model, params = _model()
    sup = _support(EN, RU)
    starts = {k: v.expand(2, *v.shape) for k, v in params.items()}
    owner = np.array([0, 1])
    probe = lambda lrs, region: probe_losses(  # noqa: E731
        model, starts, owner, sup, steps=2, lrs=lrs, trainable=None, max_step_norm=region
    )
    still = probe(0.0, None)
    np.testing.assert_allclose(probe(0.5, 1e-7), still, rtol=1e-5)
    assert (probe(0.5, None) < still - 0.05).all()


def test_a_probe_over_several_step_counts_is_the_mean_of_each_counts_probe():
    """`bank.probe_steps=[1, 3]` scores each start by its held-out loss after 1 AND 3 steps
    (one trajectory, scored on the way), so a start that diverges late loses to a steady one."""
    from pipeline import config
    from pipeline.bank.warm_start import probe_losses

    model, params = _model()
    sup = _support(EN, RU)
    starts = {k: v.expand(2, *v.shape) for k, v in params.items()}
    owner = np.array([0, 1])
    probe = lambda steps: probe_losses(  # noqa: E731
        model, starts, owner, sup, steps=steps, lrs=0.5, trainable=None
    )
    np.testing.assert_allclose(probe((1, 3)), (probe(1) + probe(3)) / 2, rtol=1e-5)
    assert config.load(None, ["bank.probe_steps=[1,2,5]"]).bank.probe_steps == (1, 2, 5)
    with pytest.raises(config.ConfigError, match="ascending distinct"):
        config.load(None, ["bank.probe_steps=[5,1]"])


def test_a_probe_without_the_split_scores_the_loss_on_the_words_it_adapted_on():
    """`bank.probe_split=false`: each start is adapted on the whole support and scored there,
    so its probe loss is the training loss after those steps, not the split-half loss."""
    from pipeline.bank.warm_start import probe_losses
    from pipeline.meta.inner import adapt
    from pipeline.meta.losses import model_loss

    model, params = _model()
    sup = _support(EN, RU)
    starts = {k: v.expand(2, *v.shape) for k, v in params.items()}
    owner = np.array([0, 1])
    whole = probe_losses(model, starts, owner, sup, steps=2, lrs=0.5, trainable=None, split=False)
    with torch.no_grad():
        trained = model_loss(model, adapt(starts, sup, model=model, steps=2, lrs=0.5), sup)
    np.testing.assert_allclose(whole, trained.double().numpy(), rtol=1e-5)
    split = probe_losses(model, starts, owner, sup, steps=2, lrs=0.5, trainable=None)
    assert (whole < split).all()  # scored on words it was fitted to: a lower loss


def test_fallback_keeps_each_tasks_trajectory_with_the_lower_support_loss():
    """`bank.fallback`: beside a warm start's trajectory the meta-init's runs too; a task whose
    warm start ends worse on its own support words is scored on the meta-init's trajectory,
    one whose warm start fits better keeps it, and each count decides afresh."""
    from pipeline.meta.inner import adapt, adapt_then_score, adapt_then_score_with_fallback
    from pipeline.meta.losses import model_loss

    model, params = _model()
    sup = _support(EN, RU)
    good = adapt(params, sup, model=model, steps=20, lrs=0.5)  # fitted to each task's words
    torch.manual_seed(1)
    bad = {k: v + 3.0 * torch.randn_like(v) for k, v in good.items()}  # far from any task
    warm = {k: torch.stack([good[k][0], bad[k][1]]).detach() for k in params}
    score = lambda p, q: model_loss(model, p, q).detach().numpy()  # noqa: E731
    kw = dict(model=model, steps=[0, 2], lrs=0.5, score=score)
    got, fell = adapt_then_score_with_fallback(warm, params, sup, sup, **kw)
    alone, meta = adapt_then_score(warm, sup, sup, **kw), adapt_then_score(params, sup, sup, **kw)
    for s in (0, 2):
        assert fell[s].tolist() == [False, True]
        np.testing.assert_allclose(got[s], [alone[s][0], meta[s][1]], rtol=1e-5)
