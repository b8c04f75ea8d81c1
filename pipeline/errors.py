"""Errors whose messages name the file, field or value at fault and what would fix it."""

from __future__ import annotations


class MetarayError(Exception):
    """Base class: the CLI prints the message alone, without a traceback."""


class ShardError(MetarayError):
    """A shard set that cannot be read or written as asked (file, field, value, fix)."""


class EpisodeError(MetarayError):
    """Rows that cannot make the requested episode (e.g. too few rows in a task)."""


class BankError(MetarayError):
    """A memory-bank operation that cannot be done as asked (snapshot file, key, shape, fix)."""


class CheckpointError(MetarayError):
    """A run checkpoint that cannot be written or read back (names the file and the fix)."""
