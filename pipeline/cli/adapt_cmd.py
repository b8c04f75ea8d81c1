"""`metaray adapt`: adapt a trained meta-model to a user's support file; write the adapted params.

    metaray adapt --checkpoint runs/metaray/ckpt --support words.txt --out adapted.safetensors
        [--bank-uri DIR|s3://...  |  --bank-running]  [--steps N]  [overrides...]

The support file holds one example per line (UTF-8). The start is the memory bank's warm
start when a stored task is similar enough (`bank.threshold`), else the meta-init; then the
core's one inner loop. The output is safetensors (one tensor per parameter) with metadata
saying where adaptation started, the similarity, the steps, the support loss before/after and
`floor_eps`, the weight of a uniform guess in the output that fits the support best
(`losses.fit_floor`; the rule `metaray evaluate` scores with by default).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any

from pipeline.data.episodes import UNIFORM_BPB


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("adapt", help="adapt to a support file; write adapted params (safetensors)")
    p.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint or run directory, local or s3:// (a run: its best on validation)",
    )
    p.add_argument("--s3-endpoint", help="S3 endpoint URL (else AWS_ENDPOINT_URL)")
    p.add_argument("--support", required=True, help="text file: one support example per line")
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.add_argument("--steps", type=int, help="inner steps (default: the checkpoint's inner.steps)")
    p.add_argument("--bank-uri", help="warm-start from the bank snapshot at this location")
    p.add_argument("--bank-running", action="store_true", help="warm-start from the running bank")
    p.add_argument("--key", help="also store the result in the bank under this task key")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. bank.threshold=0.8")
    p.set_defaults(func=_adapt)


def _read_support(path: str) -> list[str]:
    from pipeline.data.sources.text import decode_lines
    from pipeline.errors import MetarayError

    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise MetarayError(f"support file {path}: cannot read it ({exc.strerror})") from None
    try:  # the same decoding as `shards build text`: a bad byte is named by line and column
        lines = [ln.strip() for ln in decode_lines(raw, f"support file {path}")]
    except MetarayError as exc:
        raise MetarayError(str(exc)) from None
    if not lines:
        raise MetarayError(f"support file {path} has no non-empty lines: one example per line")
    return lines


def _adapt(args: argparse.Namespace) -> int:
    """Checkpoint + support file -> warm start (bank) or meta-init -> inner loop -> file."""
    loaded, cfg, model = _load(args)
    support, n_examples = _support(args.support, cfg)
    query, svc = _bank_query(args, cfg)
    steps = cfg.inner.steps if args.steps is None else args.steps
    result = _run_adapt(loaded, cfg, model, support, query, steps)
    _write(args, result, steps, n_examples)
    if args.key and svc is not None:
        _store(svc, args.key, result, steps, n_examples)
    info = result.info
    print(f"start: {info.sources[0]} (best similarity {info.best_sims[0]})")
    if info.fell_back and info.fell_back[0]:
        print(
            f"fallback: after {steps} steps the meta-init's trajectory had the lower support "
            f"loss, so the result continues from the meta-init, not {info.sources[0]}"
        )
    bpb = 1 / math.log(2)  # the loss is nats per byte; metaray reports bits per byte
    print(
        f"support loss {result.before * bpb:.4f} -> {result.after * bpb:.4f} bits per byte "
        f"after {steps} steps ({UNIFORM_BPB:.2f} = a uniform guess over bytes)"
    )
    print(
        f"output floor: eps {result.floor_eps:g} fits the support best: predict with "
        "(1 - eps) softmax + eps / vocab (metadata floor_eps)"
    )
    print(f"wrote {args.out}")
    return 0


@dataclass
class _Result:
    adapted: dict[str, Any]  # task-batched [1, ...] adapted parameters
    info: Any  # warm_start.StartInfo: where adaptation started
    before: float  # support loss at the meta-init
    after: float  # support loss adapted
    floor_eps: float  # weight of uniform in the output that best fits the support, adapted
    names: list[str]  # the meta-parameters' names
    meta_init: dict[str, Any]  # the parameters adaptation started from before any warm start


def _load(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """The checkpoint, its config with the command line's overrides, the model."""
    from pipeline import checkpoint, config
    from pipeline.errors import MetarayError
    from pipeline.models import build_model

    with checkpoint.located(args.checkpoint, s3_endpoint=args.s3_endpoint) as found:
        print(f"checkpoint: {found.why}: {found.uri}")
        for reason in found.skipped:
            print(f"  skipped (did not verify): {reason}")
        loaded = checkpoint.load(found.path)
    args.found_checkpoint = found.uri
    base = config.from_dict(loaded.config, f"{args.checkpoint}/meta.json")
    cfg = config.with_overrides(base, args.overrides, "checkpoint config + overrides")
    if cfg.data.episode != "lm":
        raise MetarayError(
            f"metaray adapt takes text support files, for lm models; this checkpoint is "
            f"data.episode={cfg.data.episode!r}"
        )
    return loaded, cfg, build_model(cfg.model, cfg.data)


def _support(path: str, cfg: Any) -> tuple[Any, int]:
    """The support file as one task's Split of tensors (T=1), and its number of examples."""
    import torch

    from pipeline.data.episodes import Split, encode

    x, y, mask = encode(_read_support(path), cfg.data.max_len)
    return Split(*(torch.from_numpy(a[None]) for a in (x, y, mask))), int(x.shape[0])


def _bank_query(args: argparse.Namespace, cfg: Any) -> tuple[Any, Any]:
    """(query callable or None, in-process BankService or None) for the chosen bank."""
    if args.bank_uri:
        from pipeline.bank.service import BankService
        from pipeline.bank.warm_start import with_entry_support

        svc = BankService(cfg.bank.model_copy(update={"snapshot_uri": args.bank_uri}))
        return with_entry_support(svc), svc  # stored support sizes: the calibrated similarity
    if args.bank_running:
        import ray  # Ray: the running bank actor of a cluster

        from pipeline.bank import actor

        ray.init(address=cfg.cluster.address or "auto", log_to_driver=False)
        handle = actor.lookup_bank(cfg.bank.name, cfg.bank.namespace)
        return (lambda d, k: actor.query(handle, d, k)), None
    return None, None


def _run_adapt(loaded: Any, cfg: Any, model: Any, support: Any, query: Any, steps: int) -> _Result:
    import torch

    from pipeline.bank.warm_start import adapt_with_bank
    from pipeline.meta.losses import fit_floor, model_loss
    from pipeline.meta.outer import trainable_names

    params = loaded.state.params
    adapted, info = adapt_with_bank(
        model,
        params,
        support,
        cfg=cfg.bank,
        query=query,
        steps=steps,
        lrs=loaded.state.lrs,
        trainable=trainable_names(model, cfg.inner),
        max_step_norm=cfg.inner.max_step_norm,
    )
    with torch.no_grad():
        before = float(model_loss(model, params, support)[0])
        after = float(model_loss(model, adapted, support)[0])
        out = model.functional(adapted, support.x, support.mask)
        eps = float(fit_floor(out, support.y, support.mask)[0])
    return _Result(adapted, info, before, after, eps, list(params), params)


def _write(args: argparse.Namespace, result: _Result, steps: int, n_examples: int) -> None:
    """The adapted parameters as safetensors, with where they came from; atomic."""
    import os

    from safetensors.torch import save_file

    tensors = {k: v[0].contiguous() for k, v in result.adapted.items()}
    meta = {
        "start": result.info.sources[0],
        "best_similarity": str(result.info.best_sims[0]),
        "fell_back_to_meta_init": str(bool(result.info.fell_back and result.info.fell_back[0])),
        "steps": str(steps),
        "support_examples": str(n_examples),
        "support_loss_meta_init_nats": f"{result.before:.6f}",
        "support_loss_adapted_nats": f"{result.after:.6f}",
        # predict with (1 - eps) softmax + eps / vocab (`metaray evaluate`'s support floor)
        "floor_eps": f"{result.floor_eps:g}",
        "checkpoint": args.found_checkpoint,  # the one used (a run dir resolves to one)
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    save_file(tensors, tmp, metadata=meta)
    os.replace(tmp, args.out)


def _store(svc: Any, key: str, result: _Result, steps: int, n_examples: int) -> None:
    """Also keep the result in the (in-process) bank under `key`."""
    import numpy as np

    from pipeline.bank.warm_start import flatten, flatten_batched

    svc.put(
        {
            "keys": [key],
            "descriptor": result.info.descriptors,
            "params": flatten_batched(result.adapted, result.names),
            "base": flatten(result.meta_init),  # what the bank stores deltas from (params.py)
            "step": np.array([steps]),
            "support": np.array([n_examples]),
            "loss": np.array([result.after]),
        }
    )
