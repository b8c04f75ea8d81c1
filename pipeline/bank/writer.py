"""SHELL: the asynchronous, bounded-in-flight bank writer the training loop calls.

`submit` never blocks on the bank: it reaps finished puts (`ray.wait(timeout=0)`), and if
`bank.max_in_flight` puts are still outstanding it DROPS the new batch and counts it. Why drop
rather than wait: the trainer re-adapts and re-writes the same task keys on later steps (upsert
by key), so a dropped write is replaced soon, while a wait would put the bank's speed on the
training step's critical path. Failed puts are logged and counted, never raised into training.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

from pipeline.config import BankConfig

log = logging.getLogger(__name__)


class BankWriter:
    def __init__(self, cfg: BankConfig, bank=None) -> None:
        from pipeline.bank.actor import get_bank

        self.cfg = cfg
        self.bank = bank if bank is not None else get_bank(cfg)
        self._in_flight: deque = deque()
        self.stats = {"submitted": 0, "acked": 0, "dropped": 0, "failed": 0, "submit_s": 0.0}

    def _reap(self, timeout: float = 0.0) -> None:
        import ray

        if not self._in_flight:
            return
        done, _ = ray.wait(list(self._in_flight), num_returns=len(self._in_flight), timeout=timeout)
        for ref in done:
            self._in_flight.remove(ref)
            try:
                ray.get(ref)
                self.stats["acked"] += 1
            except Exception as exc:  # the bank must never break training
                self.stats["failed"] += 1
                log.warning("memory bank put failed (%s); training continues", exc)

    def submit(self, batch: dict[str, Any]) -> bool:
        """Queue a put batch; False when it was dropped because the bank is behind."""
        from pipeline.bank.actor import put

        t = time.perf_counter()
        self._reap()
        if len(self._in_flight) >= self.cfg.max_in_flight:
            self.stats["dropped"] += 1
            accepted = False
        else:
            self._in_flight.append(put(self.bank, batch))
            self.stats["submitted"] += 1
            accepted = True
        self.stats["submit_s"] += time.perf_counter() - t
        return accepted

    def flush(self, timeout: float | None = 60.0) -> dict:
        """Wait for outstanding puts (end of training); returns the counters."""
        import ray

        if self._in_flight:
            ray.wait(list(self._in_flight), num_returns=len(self._in_flight), timeout=timeout)
        self._reap()
        return dict(self.stats, in_flight=len(self._in_flight))
