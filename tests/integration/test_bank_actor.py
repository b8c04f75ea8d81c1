"""The shared bank actor on a real local Ray cluster: crash recovery, many writers, the writer."""

import uuid

import numpy as np
import pytest

from pipeline.config import BankConfig
from tests.unit.bank.test_store import assert_within_delta_rounding

pytestmark = pytest.mark.integration


def _batch(tag: str, n: int, dim: int = 16, p: int = 64, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    base = np.random.default_rng(999).standard_normal(p).astype(np.float32)  # the meta-init
    return {
        "keys": [f"{tag}-{i}" for i in range(n)],
        "descriptor": rng.standard_normal((n, dim)).astype(np.float32),
        "params": base + 0.05 * rng.standard_normal((n, p)).astype(np.float32),
        "base": base,
        "step": np.full(n, 1),
        "support": np.full(n, 16),
        "loss": rng.random(n).astype(np.float32),
    }


def _cfg(tmp_path, **kw) -> BankConfig:
    name = f"bank-{uuid.uuid4().hex[:8]}"
    return BankConfig(name=name, snapshot_uri=str(tmp_path / name), **kw)


def _wait_alive(bank, tries: int = 120):
    import time

    import ray

    for _ in range(tries):
        try:
            return ray.get(bank.ping.remote(), timeout=5)
        except Exception:  # restarting
            time.sleep(0.5)
    raise AssertionError("bank actor did not come back")


def test_killed_bank_comes_back_with_every_acknowledged_entry(ray_cluster, tmp_path):
    import ray

    from pipeline.bank.actor import get_bank, put

    cfg = _cfg(tmp_path, snapshot_every=4)
    bank = get_bank(cfg)
    batches = [_batch(f"b{i}", 8, seed=i) for i in range(12)]
    refs = [put(bank, b) for b in batches[:5]]
    ray.get(refs[-1])  # the bank is up and the first puts are in
    for i, b in enumerate(batches[5:]):
        refs.append(put(bank, b))
        if i == 2:
            ray.kill(bank, no_restart=False)  # crash mid-run, writes in flight
    acked = []
    for b, ref in zip(batches, refs, strict=True):
        try:
            ray.get(ref)
            acked.append(b)
        except ray.exceptions.RayActorError:
            pass
    assert acked, "no put was acknowledged at all"
    _wait_alive(bank)
    again = get_bank(cfg)  # found by name
    keys = set(ray.get(again.keys.remote()))
    for b in acked:
        assert set(b["keys"]) <= keys
        got = ray.get(again.get.remote(b["keys"][3]))
        assert_within_delta_rounding(got["params"], b["params"][3], b["base"])
    assert len(acked) >= 5
    assert ray.get(again.stats.remote())["restored"]["entries"] >= 8 * len(acked)


def test_group_acknowledged_by_put_many_survives_sigkill_of_the_actor(ray_cluster, tmp_path):
    """Group commit through the actor: batches acknowledged by `put_many` (one WAL fsync for
    the group) come back after the actor PROCESS is SIGKILLed while a big group is still being
    appended (a crash mid-append: its torn frames, never acknowledged, must not break restore)."""
    import os
    import signal
    import time

    import ray

    from pipeline.bank.actor import get_bank, put_many

    cfg = _cfg(tmp_path, snapshot_every=1000)
    bank = get_bank(cfg)
    wide = 16_384  # 64 KiB per entry, so the big group below takes a while to append
    groups = [[_batch(f"g{g}-{i}", 4, p=wide, seed=10 * g + i) for i in range(6)] for g in range(3)]
    acks = ray.get([put_many(bank, grp) for grp in groups])
    assert [len(a) for a in acks] == [6, 6, 6] and acks[-1][-1]["entries"] == 72
    big = [_batch(f"big-{i}", 64, p=wide, seed=1000 + i) for i in range(12)]  # 48 MiB
    pid = ray.get(bank.pid.remote())
    segment = os.path.join(cfg.snapshot_uri, "wal", "000000000000.wal")
    acked_bytes = os.path.getsize(segment)
    in_flight = put_many(bank, big)
    deadline = time.monotonic() + 30
    while os.path.getsize(segment) == acked_bytes and time.monotonic() < deadline:
        pass  # kill as soon as the group's append has begun: most likely mid-write
    os.kill(pid, signal.SIGKILL)
    try:
        ray.get(in_flight)
        big_acked = True  # it won the race: then it must survive too
    except ray.exceptions.RayActorError:
        big_acked = False
    _wait_alive(bank)
    again = get_bank(cfg)
    assert ray.get(again.pid.remote()) != pid
    keys = set(ray.get(again.keys.remote()))
    for grp in groups + ([big] if big_acked else []):
        for b in grp:
            assert set(b["keys"]) <= keys
            got = ray.get(again.get.remote(b["keys"][1]))
            assert_within_delta_rounding(got["params"], b["params"][1], b["base"])
    stats = ray.get(again.stats.remote())
    assert stats["restored"]["wal_records"] >= 18
    # a torn big frame is reported as such, never as damage; a whole frame is replayed whole
    assert all("torn record" in w for w in stats["warnings"]), stats["warnings"]
    assert all(k in keys for k in big[0]["keys"]) or not any(k in keys for k in big[0]["keys"])
    ray.kill(again, no_restart=True)


def test_concurrent_writers_and_readers_lose_nothing(ray_cluster, tmp_path):
    import ray

    cfg = _cfg(tmp_path, snapshot_every=5)
    from pipeline.bank.actor import get_bank

    ray.get(get_bank(cfg).ping.remote())

    @ray.remote(num_cpus=0.25)
    def writer(w: int, cfg_dict: dict) -> int:
        from pipeline.bank.actor import get_bank, put
        from pipeline.config import BankConfig

        bank = get_bank(BankConfig.model_validate(cfg_dict))  # reached by name
        for j in range(15):
            ray.get(put(bank, _batch(f"w{w}-{j}", 10, seed=100 * w + j)))
        return 150

    @ray.remote(num_cpus=0.25)
    def reader(cfg_dict: dict) -> int:
        from pipeline.bank.actor import get_bank, query
        from pipeline.config import BankConfig

        bank = get_bank(BankConfig.model_validate(cfg_dict))
        seen = 0
        for _ in range(30):
            out = query(bank, np.ones((4, 16), np.float32), 3)
            seen += sum(len(k) for k in out["keys"])
        return seen

    from pipeline.config import to_dict

    raw = to_dict(cfg)
    written = ray.get([writer.remote(w, raw) for w in range(4)] + [reader.remote(raw)])
    assert sum(written[:4]) == 600
    bank = get_bank(cfg)
    assert ray.get(bank.stats.remote())["entries"] == 600
    for w in range(4):
        b = _batch(f"w{w}-7", 10, seed=100 * w + 7)
        got = ray.get(bank.get.remote(b["keys"][5]))
        assert_within_delta_rounding(got["params"], b["params"][5], b["base"])
    ray.kill(bank, no_restart=True)
    from pipeline.bank.service import BankService

    assert len(BankService(cfg).index) == 600  # and all of it is on disk


def test_writer_is_bounded_and_flushes(ray_cluster, tmp_path):
    import ray

    from pipeline.bank.writer import BankWriter

    cfg = _cfg(tmp_path, max_in_flight=2)
    w = BankWriter(cfg)
    accepted = [w.submit(_batch(f"s{i}", 4, seed=i)) for i in range(20)]
    stats = w.flush()
    assert stats["submitted"] == sum(accepted) and stats["dropped"] == 20 - sum(accepted)
    assert stats["acked"] == stats["submitted"] and stats["in_flight"] == 0
    entries = ray.get(w.bank.stats.remote())["entries"]
    assert entries == 4 * stats["acked"]


def test_trainer_hook_writes_each_task_adapted_params_to_the_bank(ray_cluster, tmp_path):
    import types

    import ray
    import torch

    from pipeline import config
    from pipeline.bank.trainer_hook import BankHook
    from pipeline.bank.warm_start import flatten
    from pipeline.data import episodes as ep
    from pipeline.meta import outer
    from pipeline.meta.inner import adapt
    from pipeline.models import build_model

    name = f"bank-{uuid.uuid4().hex[:8]}"
    cfg = config.load(
        None,
        [
            "model.hidden=16",
            "model.embed=8",
            "data.max_len=8",
            "outer.meta_batch=4",
            "bank.enabled=true",
            f"bank.name={name}",
            "bank.write_every=2",
            "bank.descriptor=grad",
        ],
    )
    words = {
        lang: {
            "text": np.array([f"{lang}{i}" for i in range(40)], dtype=object),
            "freq": np.ones(40, np.float32),
        }
        for lang in ("aa", "bb", "cc", "dd", "ee")
    }
    pool = types.SimpleNamespace(train_tasks=sorted(words), seed=0, meta_batch=4)
    model = build_model(cfg.model, cfg.data)
    state = outer.init_state(model, cfg.inner, cfg.outer, seed=0)
    hook = BankHook(cfg.bank, model)
    batch = ep.build_step(
        lambda k: words[k], pool.train_tasks, cfg.data, seed=0, step=1, meta_batch=4
    )
    tb = ep.to_torch(batch)
    _, _, adapted = outer.train_step(
        state, tb, model=model, inner_cfg=cfg.inner, outer_cfg=cfg.outer, return_adapted=True
    )
    assert not hook.after_step(0, state.params, tb, adapted)  # write_every=2: step 0 is skipped
    assert hook.after_step(1, state.params, tb, adapted)
    assert hook.close()["acked"] == 1
    keys = [s[0] for s in ep.plan_step(pool.train_tasks, 0, 1, 4)]
    bank = hook.writer.bank
    assert sorted(ray.get(bank.keys.remote())) == sorted(set(keys))
    b = ep.to_torch(batch)
    want = adapt(
        state.params,
        b.support,
        model=model,
        steps=cfg.inner.steps,
        lrs=state.lrs,
        first_order=True,
    )
    i = len(keys) - 1 - keys[::-1].index(keys[-1])  # a repeated key keeps its last slot
    got = ray.get(bank.get.remote(keys[-1]))
    want_flat = flatten({k: v[i].detach() for k, v in want.items()})
    base = flatten(state.params)  # the hook sent it: the bank stores float16 deltas from it
    err = np.abs(got["params"] - want_flat)
    assert (err <= np.abs(want_flat - base) * 2.0**-11 + 2.0**-25 + 1e-6).all(), err.max()
    assert got["step"] == 2 and got["support"] == cfg.data.k_support
    del torch


def test_bank_inspect_against_the_running_actor(ray_cluster, tmp_path, capsys):
    import json

    import ray

    from pipeline.bank.actor import get_bank, put, query
    from pipeline.cli import main

    cfg = _cfg(tmp_path)
    bank = get_bank(cfg)
    b = _batch("lang", 5)
    ray.get(put(bank, b))
    query(bank, b["descriptor"][:2], 1)  # two exact hits
    args = [
        "bank",
        "inspect",
        "--neighbours",
        "lang-0",
        "-k",
        "2",
        "--list",
        "3",
        "--json",
        f"bank.name={cfg.name}",
        f"bank.namespace={cfg.namespace}",
    ]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["stats"]["entries"] == 5 and out["stats"]["hit_rate"] == 1.0
    assert len(out["neighbours"]) == 2 and len(out["entries"]) == 3
    assert main(["bank", "inspect", "bank.name=no-such-bank"]) == 1
    assert "no memory bank actor named 'no-such-bank'" in capsys.readouterr().err
