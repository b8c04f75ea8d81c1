"""MLflow pyfunc loader for a metaray model: code + safetensors + JSON, nothing unpickled.

`mlflow.pyfunc.load_model(uri)` calls `_load_pyfunc(data_path)`; the data directory holds
`weights.safetensors` (the meta-learned initial parameters, bare or as a checkpoint's
`params/<name>` or `params.<name>` entries)
and `config.json` (the resolved run config). `predict` runs the meta-learned
initialisation without adaptation:
- regression: a DataFrame/array with column `x` -> predicted `y` per row;
- lm: column `text` -> mean negative log-likelihood per byte of each text;
- classify: column `text` -> logits per class.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

BOS, EOS, PAD = 256, 257, 258


def _column(model_input: Any, name: str) -> list[Any]:
    if hasattr(model_input, "columns"):
        return list(model_input[name] if name in model_input.columns else model_input.iloc[:, 0])
    if isinstance(model_input, dict):
        return list(model_input[name])
    return list(np.asarray(model_input).reshape(-1))


class MetarayPyfunc:
    def __init__(self, data_path: str) -> None:
        import torch
        from safetensors.torch import load_file

        from pipeline import config
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
        self._torch = torch

    def _run(self, x: Any, mask: Any) -> Any:
        # `functional` takes task-batched inputs [T, ...]: this is one task.
        with self._torch.no_grad():
            return self.model.functional(self.params, x.unsqueeze(0), mask.unsqueeze(0)).squeeze(0)

    def _encode(self, texts: list[str]) -> tuple[Any, Any, Any]:
        torch, n = self._torch, self.cfg.data.max_len
        xs = np.full((len(texts), n), PAD, dtype=np.int64)
        ys = np.full((len(texts), n), PAD, dtype=np.int64)
        mask = np.zeros((len(texts), n), dtype=np.float32)
        for i, text in enumerate(texts):
            body = list(str(text).encode("utf-8"))[: n - 1]
            xs[i, : len(body) + 1] = [BOS, *body]
            ys[i, : len(body) + 1] = [*body, EOS]
            mask[i, : len(body) + 1] = 1.0
        return torch.from_numpy(xs), torch.from_numpy(ys), torch.from_numpy(mask)

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        torch = self._torch
        episode = self.cfg.data.episode
        if episode == "regression":
            x = torch.tensor(np.asarray(_column(model_input, "x"), dtype=np.float32)).reshape(-1, 1)
            return self._run(x, torch.ones(x.shape[0])).reshape(-1).numpy()
        x, y, mask = self._encode([str(t) for t in _column(model_input, "text")])
        out = self._run(x, mask)
        if episode == "classify":
            return out.numpy()
        logp = torch.log_softmax(out, dim=-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
        return (-(logp * mask).sum(-1) / mask.sum(-1)).numpy()


def _load_pyfunc(data_path: str, model_config: Any = None) -> MetarayPyfunc:
    return MetarayPyfunc(data_path)
