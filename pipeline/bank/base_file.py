"""base.safetensors: the bank's base (the meta-init float16 entries are deltas from), saved
under the sha256 of its bytes so that a changed base is refused rather than silently shifting
every delta stored against it."""

from __future__ import annotations

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from pipeline.bank.formats import st_header
from pipeline.bank.params import digest
from pipeline.errors import BankError


def base_bytes(base: np.ndarray, sha256: str) -> bytes:
    return st_save({"base": np.ascontiguousarray(base, np.float32)}, {"sha256": sha256})


def load_base(data: bytes, label: str) -> np.ndarray:
    """The base vector of a base.safetensors; its bytes must match the digest it was saved
    under (a base that changed would silently shift every delta stored against it)."""
    try:
        base = st_load(data)["base"]
        want = st_header(data)[1]["sha256"]
    except Exception as exc:
        raise BankError(f"bank base {label}/base.safetensors is unreadable ({exc})") from None
    if digest(base) != want:
        raise BankError(
            f"bank base {label}/base.safetensors does not match its sha256 {want[:12]}: every "
            "float16 entry is a delta from it; restore the file from an export of this bank"
        )
    return base
