"""`metaray adapt`: a support file -> adapted parameters (safetensors), with bank warm start."""

import torch
from safetensors import safe_open

from pipeline import checkpoint, config
from pipeline.cli import main
from pipeline.meta import outer
from pipeline.models import build_model
from pipeline.runtime import selection


def _checkpoint(tmp_path, *over: str):
    base = ["model.hidden=16", "model.embed=8", "data.max_len=12", "inner.lr=0.3"]
    cfg = config.load(None, [*base, *over])
    model = build_model(cfg.model, cfg.data)
    state = outer.init_state(model, cfg.inner, cfg.outer, seed=0)
    # a run directory, as the README's `metaray adapt --checkpoint runs/quickstart` gives it
    checkpoint.save(tmp_path / "run" / "checkpoint_000001", state, config=config.to_dict(cfg))
    return tmp_path / "run", state


def test_adapt_writes_params_then_a_stored_task_warm_starts_the_next_call(tmp_path, capsys):
    ckpt, state = _checkpoint(tmp_path)
    support = tmp_path / "words.txt"
    support.write_text("\n".join(["the", "and", "of", "to", "in", "that", "is"]) + "\n")
    bank = str(tmp_path / "bank")
    out1 = tmp_path / "a1.safetensors"
    assert (
        main(
            [
                "adapt",
                "--checkpoint",
                str(ckpt),
                "--support",
                str(support),
                "--out",
                str(out1),
                "--steps",
                "3",
                "--bank-uri",
                bank,
                "--key",
                "english",
            ]
        )
        == 0
    )
    said = capsys.readouterr().out  # metaray's unit: bits per byte, never bare nats
    assert "bits per byte after 3 steps" in said and "nats" not in said
    with safe_open(str(out1), "pt") as f:
        meta = f.metadata()
        assert set(f.keys()) == set(state.params)
        for k in state.params:
            assert f.get_tensor(k).shape == state.params[k].shape
    assert meta["start"] == "meta-init" and meta["steps"] == "3"
    assert float(meta["support_loss_adapted_nats"]) < float(meta["support_loss_meta_init_nats"])
    # the output floor that fits the support best, printed and kept with the parameters
    from pipeline.meta.losses import FLOOR_GRID

    assert float(meta["floor_eps"]) in FLOOR_GRID
    assert f"output floor: eps {meta['floor_eps']} " in said
    out2 = tmp_path / "a2.safetensors"
    assert (
        main(
            [
                "adapt",
                "--checkpoint",
                str(ckpt),
                "--support",
                str(support),
                "--out",
                str(out2),
                "--steps",
                "0",
                "--bank-uri",
                bank,
                "bank.fallback=true",  # the stored entry fits these words: it is kept
            ]
        )
        == 0
    )
    with safe_open(str(out2), "pt") as f2, safe_open(str(out1), "pt") as f1:
        assert f2.metadata()["start"] == "bank:english"
        assert f2.metadata()["fell_back_to_meta_init"] == "False"
        for k in state.params:  # 0 steps from the stored entry = the stored params, up to
            # float16 rounding of their difference from the meta-init (the bank's base)
            delta = (f1.get_tensor(k) - state.params[k]).abs().max()
            torch.testing.assert_close(
                f2.get_tensor(k), f1.get_tensor(k), rtol=0, atol=float(delta) * 2**-10 + 1e-7
            )
    assert "start: bank:english" in capsys.readouterr().out


def test_empty_support_file_is_a_clear_error(tmp_path, capsys):
    ckpt, _ = _checkpoint(tmp_path)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert (
        main(
            [
                "adapt",
                "--checkpoint",
                str(ckpt),
                "--support",
                str(empty),
                "--out",
                str(tmp_path / "x.safetensors"),
            ]
        )
        == 1
    )
    assert "has no non-empty lines" in capsys.readouterr().err


def test_adapt_takes_a_run_directory_and_uses_its_best_on_validation(tmp_path, capsys):
    cfg = config.load(None, ["model.hidden=16", "model.embed=8", "data.max_len=12"])
    model = build_model(cfg.model, cfg.data)
    state = outer.init_state(model, cfg.inner, cfg.outer, seed=0)
    run = tmp_path / "runs" / "quickstart"
    later = outer.MetaState(state.params, state.lrs, state.opt, 9)
    checkpoint.save(run / "checkpoint_2026-12-01_00-00-09", later, config=config.to_dict(cfg))
    selection.write_best(
        str(run), state, config=config.to_dict(cfg), history=[], best_val={"loss": 1.5}
    )
    support = tmp_path / "words.txt"
    support.write_text("the\nand\nof\n")
    out = tmp_path / "a.safetensors"
    argv = ["adapt", "--checkpoint", str(run), "--support", str(support), "--out", str(out)]
    assert main(argv) == 0
    said = capsys.readouterr().out
    best = "best on validation (step 0, val_loss_post 2.164 bpb)"  # 1.5 nats, in bits per byte
    assert f"checkpoint: {best}: {run}/best-step" in said
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["checkpoint"].startswith(f"{run}/best-step")
    (tmp_path / "file").write_text("x")
    argv[2] = str(tmp_path / "file")
    assert main(argv) == 1
    assert "is a file: give a checkpoint directory" in capsys.readouterr().err


def test_adapt_keeps_each_step_inside_the_checkpoints_max_step_norm(tmp_path):
    """`inner.max_step_norm` from the run's config bounds every inner step of `metaray adapt`:
    3 steps move each adapted tensor set by at most 3 x tau from the meta-init."""
    tau = 1e-3
    ckpt, state = _checkpoint(tmp_path, f"inner.max_step_norm={tau}")
    support = tmp_path / "words.txt"
    support.write_text("\n".join(["the", "and", "of", "to", "in", "that", "is"]) + "\n")
    out = tmp_path / "a.safetensors"
    args = ["adapt", "--checkpoint", str(ckpt), "--support", str(support), "--out", str(out)]
    assert main([*args, "--steps", "3"]) == 0
    with safe_open(str(out), "pt") as f:
        moved = torch.sqrt(
            sum(((f.get_tensor(k) - state.params[k]) ** 2).sum() for k in state.params)
        )
    assert 0 < float(moved) <= 3 * tau * (1 + 1e-4)
