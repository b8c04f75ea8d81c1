"""Experiment tracking: the tracker factory, the MLflow tracker and its sender, redaction,
plots and the pyfunc model. Callers use the names re-exported here."""

from pipeline.tracking.factory import (
    NullTracker,
    Tracker,
    close_children,
    make_tracker,
    pin_uri,
    replay,
    resolve_uri,
)
from pipeline.tracking.redact import REDACTED, redact_tree, redact_value, safe_params

__all__ = [
    "REDACTED",
    "NullTracker",
    "Tracker",
    "close_children",
    "make_tracker",
    "pin_uri",
    "redact_tree",
    "redact_value",
    "replay",
    "resolve_uri",
    "safe_params",
]
