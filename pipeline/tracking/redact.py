"""Redaction: what metaray logs or writes never carries credentials.

URI userinfo is stripped (the host is kept: it is useful), values shaped like AWS keys are
hidden, and any key whose name suggests a secret has its value replaced. Every config that
leaves the process (MLflow params, config.yaml, checkpoint and model artifacts) passes here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

REDACTED = "***redacted***"
# Key names that suggest a secret, matched anywhere in the dotted key.
_SECRET_KEY = re.compile(r"secret|token|passw|key|credential|auth|cookie|session_id", re.I)
# AWS access key ids (AKIA..., ASIA... temporary) anywhere in a value.
_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA)[A-Z0-9]{16}\b")
# A 40-character AWS-secret-shaped token (mixed case, digits, / or +), not a hex digest.
_AWS_SECRET = re.compile(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
# scheme://user[:password]@host: the userinfo is stripped, the host kept (it is useful).
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")


def _looks_like_aws_secret(token: str) -> bool:
    return all(re.search(p, token) for p in (r"[a-z]", r"[A-Z]", r"\d"))


def redact_value(value: Any) -> Any:
    """`value` without credentials: URI userinfo stripped, key-shaped strings hidden."""
    if not isinstance(value, str):
        return value
    if _AWS_KEY_ID.search(value):
        return REDACTED
    if any(_looks_like_aws_secret(m.group(0)) for m in _AWS_SECRET.finditer(value)):
        return REDACTED
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}***@", value)


def safe_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Params as MLflow stores them (strings, <= 6000 chars), with secrets redacted."""
    out: dict[str, str] = {}
    for key, value in params.items():
        if _SECRET_KEY.search(key.rsplit(".", 1)[-1]) and value not in (None, ""):
            out[key] = REDACTED
        else:
            out[key] = str(redact_value(value))[:6000]
    return out


def redact_tree(tree: Mapping[str, Any]) -> dict[str, Any]:
    """A nested config dict with the same redactions as `safe_params`, for what is logged whole
    (config.yaml, the checkpoint and model artifacts' config)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out[key] = redact_tree(value)
        elif _SECRET_KEY.search(key) and value not in (None, ""):
            out[key] = REDACTED
        else:
            out[key] = redact_value(value)
    return out


def for_json(x: Any) -> Any:
    """`x` (nested dicts, lists, numbers, strings) as a file or stdout may carry it: strings
    redacted (`redact_value`), inf and NaN as null (JSON has neither, and `json.dumps` would
    write bare `NaN`, which JSON readers refuse), keys as strings, anything else as `str`."""
    if x is None or isinstance(x, int):  # bool is an int
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, str):
        return redact_value(x)
    if isinstance(x, Mapping):
        return {str(k): for_json(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [for_json(v) for v in x]
    item = getattr(x, "item", None)  # numpy / torch scalars
    if callable(item) and getattr(x, "ndim", 1) == 0:
        return for_json(item())
    return redact_value(str(x))


def dumps(x: Any, *, indent: int | None = None) -> str:
    """JSON text of `for_json(x)`: valid JSON, never a credential."""
    import json

    return json.dumps(for_json(x), indent=indent, allow_nan=False)
