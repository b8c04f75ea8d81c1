"""SHELL: the one shared, named memory-bank Ray actor.

Every training worker, evaluation job and Tune trial reaches the same actor by name
(`bank.name` in namespace `bank.namespace`): `get_bank(cfg)` creates it or attaches to the
running one (`get_if_exists=True`; the first creator's config wins). The actor is
`BankService` (`service.py`) run remotely: its methods are one call into the pure index plus
persistence. It is detached (outlives the job that started it, until the cluster stops) and
restarted by Ray after a crash (`max_restarts=-1`); a restarted actor restores the latest
snapshot + WAL, so acknowledged puts come back. It reserves no CPU (`num_cpus=0`): it is idle
most of the time and must not take a trainer's slot on a small cluster.

Large payloads travel as object refs: `put(bank, batch)` does one `ray.put` of the batch and
passes the ref, which Ray resolves in the actor without re-pickling per call.
`put_many(bank, batches)` sends several batches as one ref and one call: the actor group-commits
them (one WAL fsync for all, `BankService.put_many`), the cheap way to write many small batches.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from pipeline.bank.service import BankService
from pipeline.config import BankConfig, to_dict
from pipeline.errors import BankError


@lru_cache(maxsize=1)
def _remote_cls():
    import ray

    return ray.remote(BankService)


def get_bank(cfg: BankConfig):
    """Handle to the shared bank actor, creating it on first use (needs `ray.init` done)."""
    return (
        _remote_cls()
        .options(
            name=cfg.name,
            namespace=cfg.namespace,
            get_if_exists=True,
            lifetime="detached",
            max_restarts=-1,
            max_task_retries=0,  # a put that died with the actor was never acknowledged
            num_cpus=0,
        )
        .remote(to_dict(cfg))
    )


def lookup_bank(name: str, namespace: str):
    """Handle to a RUNNING bank; a clear error when there is none."""
    import ray

    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:
        raise BankError(
            f"no memory bank actor named {name!r} in Ray namespace {namespace!r}: start "
            "training with bank.enabled=true, or point the command at a snapshot URI"
        ) from None


def put(bank, batch: dict[str, Any]):
    """Send a put batch as ONE object ref; returns the ref of the acknowledgement."""
    import ray

    return bank.put.remote(ray.put(batch))


def put_many(bank, batches: list[dict[str, Any]]):
    """Send several put batches as ONE object ref and ONE call (one WAL fsync for all of them);
    returns the ref of the list of acknowledgements."""
    import ray

    return bank.put_many.remote(ray.put(list(batches)))


def query(bank, descriptors: np.ndarray, k: int | None = None, *, with_params: bool = True):
    import ray

    ref = bank.query.remote(np.asarray(descriptors, np.float32), k, with_params=with_params)
    return ray.get(ref)
