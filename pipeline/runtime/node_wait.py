"""SHELL: a lost node is said, and the wait for its workers is bounded (`cluster.node_wait_s`).

When a node dies mid-run, Ray Train V2 restarts the worker group from the last checkpoint;
while the cluster cannot place every worker, each start attempt times out after
`RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S` (60 s) and is retried, by default forever, with a
traceback per attempt and no word about why. Here:

- `failure_limit` turns `cluster.node_wait_s` into Train's `controller_failure_limit` (the
  number of start attempts), so the run stops once the wait is over;
- `NodeWatch`, on the driver, prints a metaray line when a node leaves or joins the cluster
  (polling Ray's node table), naming the node and what the run waits for;
- `placement_error` is the message the run stops with: which workers could not be placed,
  what the cluster has now, and that the checkpoints are kept (the same command resumes).
"""

from __future__ import annotations

import math
import os
import threading
import time

from pipeline import config
from pipeline.errors import MetarayError

START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"  # Ray Train V2, read by its controller
DEFAULT_START_TIMEOUT_S = 60.0


def failure_limit(c: config.ClusterConfig) -> int:
    """Train's `controller_failure_limit` for `c.node_wait_s`: retries of a worker-group start
    that timed out. A wait shorter than one attempt shortens the attempt (the variable is
    handed from the driver to Train's controller at `fit()`), unless the user set it."""
    if START_TIMEOUT_ENV not in os.environ and c.node_wait_s < DEFAULT_START_TIMEOUT_S:
        os.environ[START_TIMEOUT_ENV] = str(c.node_wait_s)
    attempt_s = float(os.environ.get(START_TIMEOUT_ENV, DEFAULT_START_TIMEOUT_S))
    return max(0, math.ceil(c.node_wait_s / attempt_s) - 1)


def _needs(c: config.ClusterConfig) -> str:
    per = f"{c.cpus_per_worker:g} CPU" + (" + 1 GPU" if c.use_gpu else "")
    return f"{c.num_workers} worker(s) of {per}"


def _alive() -> dict[str, str]:
    import ray

    return {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in ray.nodes() if n.get("Alive")}


class NodeWatch:
    """While a run fits: a line on the driver's console whenever a node leaves or joins."""

    def __init__(self, c: config.ClusterConfig, *, every_s: float = 2.0) -> None:
        self.cluster, self.every_s = c, every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: list[str] = []  # "address (node id)" of each node that left

    def __enter__(self) -> NodeWatch:
        self._thread = threading.Thread(target=self._watch, name="metaray-node-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _watch(self) -> None:
        try:
            known = _alive()
        except Exception:  # Ray's node table unreadable: no watch, the run goes on
            return
        while not self._stop.wait(self.every_s):
            try:
                now = _alive()
            except Exception:
                continue
            for node in known.keys() - now.keys():
                name = f"{known[node]} ({node[:8]})"
                self.lost.append(name)
                print(
                    f"[metaray] node {name} left the cluster at {time.strftime('%H:%M:%S')}: "
                    f"the run restarts from its last checkpoint once {_needs(self.cluster)} "
                    f"can be placed; waiting up to {self.cluster.node_wait_s:g} s "
                    "(cluster.node_wait_s), then stopping with its checkpoints kept",
                    flush=True,
                )
            for node in now.keys() - known.keys():
                print(f"[metaray] node {now[node]} ({node[:8]}) joined the cluster", flush=True)
            known = now


def is_placement_timeout(exc: BaseException) -> bool:
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    return isinstance(getattr(exc, "controller_failure", None), WorkerGroupStartupTimeoutError)


def placement_error(c: config.ClusterConfig, lost: list[str]) -> MetarayError:
    import ray

    try:
        have = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
        nodes = len(_alive())
    except Exception:
        have, nodes = {}, 0
    why = f"node {', '.join(lost)} left the cluster" if lost else "the cluster is too small"
    return MetarayError(
        f"Ray could not place {_needs(c)} for {c.node_wait_s:g} s (cluster.node_wait_s): {why}; "
        f"the cluster now has {nodes} node(s) with {have or 'no resources'}. The run's "
        "checkpoints are kept: run the same command again once the nodes are back (it resumes "
        "from the last checkpoint), or with fewer cluster.num_workers (the results then "
        "differ from an undisturbed run), or raise cluster.node_wait_s to wait longer"
    )
