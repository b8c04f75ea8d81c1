"""The support-fitted floor (`losses.fit_floor`, `run_method(support_floor=True)`): a model that
never saw a script's bytes stops costing more than a uniform guess, and costs nothing where
it predicts the bytes well."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.config import load
from pipeline.data import episodes as ep
from pipeline.eval import baselines
from pipeline.eval import methods as ev
from pipeline.meta import outer
from pipeline.meta.losses import FLOOR_GRID, LN2, fit_floor, floored_lm_loss, task_loss
from pipeline.models import build_model


def _lm_batch(seed: int = 0, t: int = 2, n: int = 3, length: int = 5, v: int = 7):
    g = torch.Generator().manual_seed(seed)
    out = torch.randn(t, n, length, v, generator=g, dtype=torch.float64)
    y = torch.randint(0, v, (t, n, length), generator=g)
    mask = (torch.rand(t, n, length, generator=g) > 0.3).double()
    return out, y, mask


def test_floored_loss_is_the_lm_loss_at_eps_zero_and_caps_a_byte_the_model_rules_out():
    out, y, mask = _lm_batch()
    zero = floored_lm_loss(out, y, mask, torch.zeros(2))
    torch.testing.assert_close(zero, task_loss("lm", out, y, mask))
    # every true byte given ~0 probability: the plain loss is huge, the floored one is capped
    ruled_out = out.scatter(-1, y[..., None], -1e4)
    plain = task_loss("lm", ruled_out, y, mask)
    floored = floored_lm_loss(ruled_out, y, mask, torch.full((2,), 0.1))
    assert (plain > 1000).all()
    # each ruled-out byte costs log(V / eps) nats, however small its probability
    torch.testing.assert_close(floored, torch.full((2,), math.log(7 / 0.1), dtype=torch.float64))


def test_fit_floor_hedges_only_the_task_whose_support_bytes_it_does_not_predict():
    out, y, mask = _lm_batch()
    sure = out.scatter(-1, y[..., None], 20.0)  # task-wise: the true byte gets nearly all mass
    both = torch.stack([sure[0], out.scatter(-1, y[..., None], -1e4)[1]])
    eps = fit_floor(both, y, mask)
    assert float(eps[0]) == 0.0  # predicted well: no floor
    assert float(eps[1]) == max(FLOOR_GRID)  # every byte ruled out: the most uniform mixture


def _words(alphabet: str, n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    words = ["".join(rng.choice(list(alphabet), size=rng.integers(2, 6))) for _ in range(n)]
    return {"text": np.array(words, dtype=object)}


def _ascii_only_case():
    """A byte GRU that never saw a non-ASCII byte (those byte values get ~0 probability) and
    episodes of a Latin-script and an Armenian-script task: (cfg, model, params, episodes)."""
    cfg = load(
        None,
        ["data.episode=lm", "model.kind=gru", "model.hidden=8", "model.embed=4", "data.max_len=8"],
    )
    model = build_model(cfg.model, cfg.data)
    params = baselines.random_init(model, cfg, seed=0)
    params["head.bias"] = params["head.bias"].clone()
    params["head.bias"][128:256] = -40.0
    tasks = {"latin": _words("abcdefgh", 40, 0), "armenian": _words("աբգդեզէը", 40, 1)}
    eps = ev.make_episodes(
        tasks.__getitem__, sorted(tasks), cfg.data, shot=8, k_query=8, n_episodes=2, seed=0
    )
    return cfg, model, params, eps


def test_run_method_with_support_floor_scores_an_unseen_script_below_uniform_plus_one_bit():
    cfg, model, params, eps = _ascii_only_case()
    m = ev.Method("ascii-only", params, 0.1)
    plain = ev.run_method(model, m, eps, (0,))[0]
    floored = ev.run_method(model, m, eps, (0,), support_floor=True)[0]
    uniform_bits = math.log2(params["head.bias"].shape[0])
    assert np.mean(plain["armenian"]) > 20  # ruled-out bytes: far worse than uniform
    assert np.mean(floored["armenian"]) < uniform_bits + 1.0  # capped near log2(2V)
    # where the bytes are predicted at all, the fitted floor costs (almost) nothing
    assert abs(np.mean(floored["latin"]) - np.mean(plain["latin"])) < 0.05


def test_training_validation_selects_by_the_score_evaluate_reports():
    """`outer.evaluate(support_floor=True)` (checkpoint selection, early stopping) scores the
    same episodes exactly as `run_method(support_floor=True)` (the evaluation): a run is
    chosen by the figure it will be judged by, not by the unseen script's plain softmax."""
    cfg, model, params, eps = _ascii_only_case()
    state = outer.init_state(model, cfg.inner, cfg.outer, seed=0)._replace(params=params)
    batch = ep.to_torch(ep.collate([e.batch for e in eps]))
    steps = [0, 1]
    kw = {"model": model, "inner_cfg": cfg.inner, "steps": steps, "chunk": 3}
    floored = outer.evaluate(state, batch, support_floor=True, **kw)
    plain = outer.evaluate(state, batch, **kw)
    judged = ev.run_method(model, ev.Method("m", params, state.lrs), eps, steps, support_floor=True)
    for s in steps:
        per_episode = [b for v in judged[s].values() for b in v]
        assert floored[s] == pytest.approx(np.mean(per_episode) * LN2, rel=1e-5)
        assert plain[s] > floored[s] + 5.0  # the armenian episodes' ruled-out bytes
    assert cfg.outer.val_support_floor  # training's validation scores this way by default
    # the evaluation's multitask baseline is selected by the same rule
    plain_sel = baselines.select_score(model, params, batch, 0.1)
    assert baselines.select_score(model, params, batch, 0.1, True) < plain_sel - 5.0
