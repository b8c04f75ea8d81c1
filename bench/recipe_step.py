"""Milliseconds per meta-step of the shipped recipe's form (Meta-SGD, first order, init kept)
on a byte GRU LM (hidden 64, embed 16, meta-batch 8, 8 words of 16 bytes), 1 thread, at 1, 2
and 5 inner steps. Prints `<label> <steps> <ms> ms/step`.

    .venv/bin/python bench/recipe_step.py now
"""

import sys
import time

import torch

from pipeline.config import InnerConfig, OuterConfig
from pipeline.data.episodes import EpisodeBatch, Split
from pipeline.meta import outer
from pipeline.models.meta_rnn import MetaRNN

V, T, K, L = 259, 8, 8, 16


def main(label: str) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = MetaRNN(vocab=V, embed=16, hidden=64, task="lm")

    def split() -> Split:
        return Split(
            torch.randint(0, V, (T, K, L)), torch.randint(0, V, (T, K, L)), torch.ones(T, K, L)
        )

    batch = EpisodeBatch(split(), split())
    oc = OuterConfig(lr=0.3, meta_batch=T)
    for steps in (1, 2, 5):
        ic = InnerConfig(
            algorithm="metasgd", steps=steps, lr=0.3, first_order=True, learn_init=False
        )
        st = outer.init_state(model, ic, oc, seed=0)
        kw = {"model": model, "inner_cfg": ic, "outer_cfg": oc, "pre_metrics": False}
        for _ in range(3):
            outer.train_step(st, batch, **kw)
        n, t0 = 20, time.perf_counter()
        for _ in range(n):
            outer.train_step(st, batch, **kw)
        print(label, steps, f"{(time.perf_counter() - t0) / n * 1000:.1f} ms/step")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "now")
