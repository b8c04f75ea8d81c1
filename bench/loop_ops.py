"""Aten ops per chargru meta-iteration: metaray (tasks batched) vs a per-task loop (the plain
torch.func loop over nn.GRU of bench/vs_peers.py, the shape of TorchOpt's and higher's loops).
On a GPU each op is (at least) one kernel launch, so the ratio `loop ops per task / metaray ops
per iteration` is the r of `bench/scaling_model.py --loop-floor-ratio`. Counted with a
TorchDispatchMode (every aten op that reaches a kernel, autograd's included), on CPU, one
meta-iteration after a warm-up; load-independent. nn.GRU on CPU runs PyTorch's native
per-time-step GRU, as on CUDA with cuDNN off (cuDNN RNNs have no double backward).

    .venv/bin/python bench/loop_ops.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vs_peers


class Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def main() -> None:
    torch.set_num_threads(1)
    b = vs_peers.batch("chargru", torch.float32, seed=1)
    tasks = b.support.x.shape[0]
    rows = {}
    for impl in ("metaray", "torch.func loop"):
        meta_grad, update = vs_peers.contender(impl, "chargru", torch.float32)
        update(meta_grad(b))  # warm-up
        with Count() as c:
            update(meta_grad(b))
        rows[impl] = c.n
        print(json.dumps({"impl": impl, "tasks": tasks, "aten_ops_per_meta_iter": c.n}))
    r = rows["torch.func loop"] / tasks / rows["metaray"]
    print(json.dumps({"loop_ops_per_task_over_metaray_ops_per_iter": round(r, 3)}))


if __name__ == "__main__":
    main()
