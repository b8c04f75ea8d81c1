"""What metaray prints with --json or writes as JSON is valid JSON and carries no credential:
a diverged trial's NaN loss becomes null (Python's json would write a bare `NaN`, which
`jq` and JSON.parse refuse), a password in a URI is stripped."""

from __future__ import annotations

import json

import numpy as np

from pipeline.tracking.redact import dumps


def test_nan_and_inf_are_null_and_numpy_scalars_are_numbers() -> None:
    text = dumps({"loss": float("nan"), "best": [float("inf"), np.float32(1.5), np.int64(3)]})
    assert json.loads(text) == {"loss": None, "best": [None, 1.5, 3]}
    assert "NaN" not in text and "Infinity" not in text


def test_strings_are_redacted_and_unknown_objects_become_strings() -> None:
    out = json.loads(dumps({"uri": "http://bob:Pw9xx@127.0.0.1:5000", "path": object}))
    assert out["uri"] == "http://***@127.0.0.1:5000"
    assert out["path"] == "<class 'object'>"
