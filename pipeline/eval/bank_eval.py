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
        fallback=meta.params if bank_cfg.fallback else None,
        extra={"sources": sources, "bank_service": service, "descriptor": bank_cfg.descriptor},
    )


def report_sources(methods, log: Callable) -> None:
    """Say where the bank's warm starts came from (the console and eval.json's `notes`): how
    many task-episodes started from a stored entry, a blend, or the meta-init, and the entries
    used most. Without it a user cannot tell a bank that helps from one never consulted."""
    from collections import Counter

    for m in (m for m in methods if "sources" in m.extra):
        got = m.extra["sources"]
        if not got:
            continue
        entries = [s.removeprefix("bank:") for s in got if s.startswith("bank:")]
        blends = sum("," in e for e in entries)
        top = Counter(e for e in entries if "," not in e).most_common(5)
        m.note = (
            f"{len(entries)} of {len(got)} task-episodes started from the bank "
            f"({blends} from a blend), {got.count('meta-init')} from the meta-init"
            + ("; entries used most: " + ", ".join(f"{k} {n}" for k, n in top) if top else "")
            + _fallback_note(m.extra.get("fell_back", {}), len(entries))
        )
        log(f"{m.name}: {m.note}")


def _fallback_note(fell_back: dict[int, list[bool]], warm: int) -> str:
    """With bank.fallback: how many warm-started task-episodes ended on the meta-init's
    trajectory, at the largest step count (where a far start diverges, if it does)."""
    if not fell_back or not warm:
        return ""
    last = max(fell_back)
    return (
        f"; after {last} steps {sum(fell_back[last])} of the {warm} warm starts continued from "
        "the meta-init (bank.fallback: a lower support loss)"
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
