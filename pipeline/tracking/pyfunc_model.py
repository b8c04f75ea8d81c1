"""MLflow pyfunc loader for a metaray model: code + safetensors + JSON, nothing unpickled.

`mlflow.pyfunc.load_model(uri)` calls `_load_pyfunc(data_path)`; the data directory holds
`weights.safetensors` (the meta-learned initial parameters, bare or as a checkpoint's
`params/<name>` or `params.<name>` entries), `lrs.safetensors` when the run learned its inner
learning rates (Meta-SGD), and `config.json` (the resolved run config).

`predict` does what the project is for: adapt on the support rows, then score the others.
A DataFrame with a boolean column `support` (True: a support row; the signature requires it):
- lm: column `text`; returns, per non-support row, `bits_per_byte` after adapting on the
  support rows with the run's inner loop (`pipeline.meta.inner.adapt`) and
  `bits_per_byte_meta_init` (before adapting): lower is better, 8.02 = a uniform guess over bytes.
- regression: columns `x`, `y` (`y` read on support rows only); returns `y_pred` and
  `y_pred_meta_init` per non-support row.
params: `steps` (inner steps; default the run's `inner.steps`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

LN2 = math.log(2.0)


def _frame(model_input: Any) -> Any:
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        return model_input
    if isinstance(model_input, dict):
        return pd.DataFrame(model_input)
    return pd.DataFrame({"text": list(np.asarray(model_input).reshape(-1))})


class MetarayPyfunc:
    def __init__(self, data_path: str) -> None:
        import torch
        from safetensors.torch import load_file

        from pipeline import config
        from pipeline.meta.outer import trainable_names
        from pipeline.models import build_model

        root = Path(data_path)
        self.cfg = config.from_dict(
            json.loads((root / "config.json").read_text(encoding="utf-8")), str(root)
        )
        self.model = build_model(self.cfg.model, self.cfg.data)
        tensors = load_file(str(root / "weights.safetensors"))
        # a checkpoint's flat state (`params/<name>`, see outer.state_to_tensors) or bare params
        prefixes = ("params/", "params.")
        prefixed = {k[7:]: v for k, v in tensors.items() if k.startswith(prefixes)}
        self.params = {k: v.float() for k, v in (prefixed or tensors).items()}
        lrs_file = root / "lrs.safetensors"
        self.lrs: Any = load_file(str(lrs_file)) if lrs_file.exists() else self.cfg.inner.lr
        self.trainable = trainable_names(self.model, self.cfg.inner)
        self._torch = torch

    def _adapt(self, support: Any, steps: int) -> dict[str, Any]:
        from pipeline.meta.inner import adapt

        if support is None or steps <= 0:
            return self.params
        return adapt(
            self.params,
            support,
            model=self.model,
            steps=steps,
            lrs=self.lrs,
            first_order=True,  # evaluation-time adaptation, as `metaray evaluate` does it
            trainable=self.trainable,
            max_step_norm=self.cfg.inner.max_step_norm,
        )

    def _lm(self, df: Any, is_support: np.ndarray, steps: int) -> Any:
        import pandas as pd

        from pipeline.data.episodes import Split, encode

        torch = self._torch
        texts = [str(t) for t in df["text"]]

        def split(rows: list[str]) -> Split:
            x, y, m = encode(rows, self.cfg.data.max_len)
            return Split(*(torch.from_numpy(a)[None] for a in (x, y, m)))

        support = split([t for t, s in zip(texts, is_support, strict=True) if s])
        query = split([t for t, s in zip(texts, is_support, strict=True) if not s])
        adapted = self._adapt(support if is_support.any() else None, steps)

        def bpb(params: dict[str, Any]) -> np.ndarray:
            with torch.no_grad():
                logits = self.model.functional(params, query.x, query.mask)[0]
                logp = torch.log_softmax(logits, -1).gather(-1, query.y[0].unsqueeze(-1))[..., 0]
                mask = query.mask[0]
                return (-(logp * mask).sum(-1) / mask.sum(-1).clamp(min=1) / LN2).numpy()

        return pd.DataFrame(
            {"bits_per_byte": bpb(adapted), "bits_per_byte_meta_init": bpb(self.params)}
        )

    def _regression(self, df: Any, is_support: np.ndarray, steps: int) -> Any:
        import pandas as pd

        from pipeline.data.episodes import Split

        torch = self._torch
        x = torch.tensor(np.asarray(df["x"], dtype=np.float32)).reshape(1, -1, 1)
        y = np.asarray(df["y"], dtype=np.float32) if "y" in df else np.zeros(x.shape[1])
        sel = torch.tensor(is_support)
        support = Split(
            x[:, sel],
            torch.from_numpy(y[is_support]).reshape(1, -1, 1),
            torch.ones(1, int(is_support.sum())),
        )
        adapted = self._adapt(support if is_support.any() else None, steps)
        qx = x[:, ~sel]
        ones = torch.ones(1, qx.shape[1])
        with torch.no_grad():
            after = self.model.functional(adapted, qx, ones).reshape(-1).numpy()
            before = self.model.functional(self.params, qx, ones).reshape(-1).numpy()
        return pd.DataFrame({"y_pred": after, "y_pred_meta_init": before})

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        df = _frame(model_input)
        steps = int((params or {}).get("steps", self.cfg.inner.steps))
        is_support = (
            np.asarray(df["support"], dtype=bool)
            if "support" in df
            else np.zeros(len(df), dtype=bool)
        )
        if is_support.all():
            raise ValueError("every row has support=True: mark the rows to score support=False")
        episode = self.cfg.data.episode
        if episode == "regression":
            return self._regression(df, is_support, steps)
        if episode == "lm":
            return self._lm(df, is_support, steps)
        raise ValueError(f"predict serves lm and regression models; this one is {episode!r}")


def input_example(episode: str) -> Any:
    """What `predict` takes: two support rows, one row to score."""
    import pandas as pd

    if episode == "regression":
        return pd.DataFrame(
            {"x": [-1.0, 0.5, 2.0], "y": [0.3, -0.2, 0.0], "support": [True, True, False]}
        )
    return pd.DataFrame({"text": ["hello", "world", "help"], "support": [True, True, False]})


def _load_pyfunc(data_path: str, model_config: Any = None) -> MetarayPyfunc:
    return MetarayPyfunc(data_path)
