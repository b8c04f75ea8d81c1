"""`metaray evaluate --bank`: the bank warm start as an evaluation method, and the descriptor
map of the bank's entries and the test episodes (a PNG logged with the other plots)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.eval import methods as ev


def bank_method(opts: Any, cfg: Any, model: Any, meta: ev.Method, log: Callable) -> ev.Method:
    """The "bank warm start" method: the meta-init's rates from the bank's chosen start."""
    from pipeline.bank.service import BankService
    from pipeline.bank.warm_start import warm_start, with_entry_support

    endpoint = opts.s3_endpoint or cfg.bank.s3_endpoint  # read-only: the WAL is replayed
    bank_cfg = cfg.bank.model_copy(update={"snapshot_uri": opts.bank, "s3_endpoint": endpoint})
    service = BankService(bank_cfg)
    log(f"memory bank {opts.bank}: {len(service.keys())} entries")
    sources: list[str] = []
    query = with_entry_support(service)

    def start(support: Any) -> dict[str, Any]:
        params, info = warm_start(
            model,
            meta.params,
            support,
            cfg=bank_cfg,
            query=query,
            lrs=meta.lrs,  # the probe (bank.select=probe) adapts with the method's own rates
            trainable=meta.trainable,
            max_step_norm=meta.max_step_norm,
        )
        sources.extend(info.sources)
        return params

    return ev.Method(
        "bank warm start",
        meta.params,
        meta.lrs,
        meta.trainable,
        start=start,
        max_step_norm=meta.max_step_norm,
        extra={"sources": sources, "bank_service": service, "descriptor": bank_cfg.descriptor},
    )


def descriptor_map(opts: Any, model: Any, methods, by_shot, log: Callable) -> list[Path]:
    """With --bank: the map of the bank's entries and the test episodes of the smallest shot
    count (where retrieval is hardest), `<out>/bank_descriptor_map.png`; [] without a bank."""
    bank = next((m for m in methods if "bank_service" in m.extra), None)
    if bank is None:
        return []
    from pipeline.bank.descriptor_map import evaluation_map

    shot = min(by_shot)
    path = Path(opts.out_dir) / "bank_descriptor_map.png"
    service, kind = bank.extra["bank_service"], bank.extra["descriptor"]
    png = evaluation_map(model, bank.params, service, by_shot[shot], kind, path)
    log(f"descriptor map (K={shot} queries): {png}")
    return [png]
