"""The files under a bank's root (a local directory or `s3://bucket/prefix`): durable atomic
writes, streamed writes, whole and ranged reads.

Every write is atomic: locally a temp file, fsync, rename, then an fsync of the directory (so
the new name survives a crash); on S3 one PUT, which makes the object appear whole or not at
all. Nothing is pickled here: callers hand bytes (safetensors, Parquet, JSON).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterable

import numpy as np
import pyarrow.fs as pafs

from pipeline.errors import BankError


def filesystem(uri: str, s3_endpoint: str | None = None) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local directory or s3://bucket/prefix (endpoint override)."""
    if uri.startswith("s3://"):
        endpoint = s3_endpoint or os.environ.get("AWS_ENDPOINT_URL")
        kwargs: dict = {}
        if endpoint:
            scheme, _, host = endpoint.rpartition("://")
            kwargs = {"endpoint_override": host or endpoint, "scheme": scheme or "https"}
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
        if region:
            kwargs["region"] = region
        return pafs.S3FileSystem(**kwargs), uri[len("s3://") :].rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def fsync_dir(path: str) -> None:
    dfd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def described(data: bytes) -> dict:
    """{bytes, sha256} of a blob, as a snapshot manifest records each file."""
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


class RootFiles:
    """Reads and durable writes under one root URI; parameter-row files are kept open between
    ranged reads (`read_at`), since a query reads one row at a time."""

    def __init__(self, uri: str, s3_endpoint: str | None = None) -> None:
        self.uri = uri.rstrip("/")
        self.fs, self.root = filesystem(uri, s3_endpoint)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self._readers: dict = {}  # path -> open fd (local) or random-access file (S3)

    def write(self, path: str, data: bytes) -> None:
        if self.local:
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fsync_dir(os.path.dirname(path))
        else:  # one PUT: the object appears whole or not at all
            with self.fs.open_output_stream(path) as f:
                f.write(data)

    def write_stream(
        self, path: str, head: bytes, chunks: Iterable[np.ndarray], body_bytes: int
    ) -> dict:
        """`head` then each chunk's bytes, durably (local: temp file, fsync, rename; S3: one
        streamed upload); returns {bytes, sha256}. The chunks must add up to `body_bytes`."""
        h, total = hashlib.sha256(head), len(head)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}" if self.local else path
        with open(tmp, "wb") if self.local else self.fs.open_output_stream(path) as f:
            f.write(head)
            for chunk in chunks:
                data = np.ascontiguousarray(chunk).tobytes()
                h.update(data)
                f.write(data)
                total += len(data)
            if total != len(head) + body_bytes:
                raise BankError(
                    f"bank snapshot {path}: {total - len(head)} row bytes written, {body_bytes} "
                    "expected (entries changed during the snapshot)"
                )
            if self.local:
                f.flush()
                os.fsync(f.fileno())
        if self.local:
            os.replace(tmp, path)
            fsync_dir(os.path.dirname(path))
        return {"bytes": total, "sha256": h.hexdigest()}

    def read(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as f:
            return f.read()

    def hash_file(self, path: str) -> tuple[dict, bytes]:
        """({bytes, sha256}, the first 1 MiB) of a file, read in chunks."""
        h, total, head = hashlib.sha256(), 0, b""
        with self.fs.open_input_stream(path) as f:
            while chunk := f.read(16 << 20):
                if not head:
                    head = chunk[: 1 << 20]
                h.update(chunk)
                total += len(chunk)
        return {"bytes": total, "sha256": h.hexdigest()}, head

    def is_file(self, path: str) -> bool:
        return self.fs.get_file_info(path).type == pafs.FileType.File

    def list(self, sub: str) -> list[pafs.FileInfo]:
        sel = pafs.FileSelector(f"{self.root}/{sub}", allow_not_found=True)
        return self.fs.get_file_info(sel)

    def read_at(self, path: str, offset: int, n: int) -> bytes:
        """`n` bytes at `offset` of `path` (a parameter row): pread / an S3 range read, with the
        file kept open for the next hit."""
        f = self._readers.get(path)
        try:
            if f is None:
                f = os.open(path, os.O_RDONLY) if self.local else self.fs.open_input_file(path)
                self._readers[path] = f
            data = os.pread(f, n, offset) if self.local else f.read_at(n, offset)
        except (OSError, FileNotFoundError) as exc:
            raise BankError(
                f"bank parameter file {path} cannot be read ({exc}); restore the bank from its "
                "snapshot_uri (restart the bank) or re-import an export"
            ) from None
        if len(data) != n:
            raise BankError(
                f"bank parameter file {path} ends before byte {offset + n} (an entry's row); it "
                "was truncated after the bank wrote it: restore the bank (restart it)"
            )
        return bytes(data)

    def close_readers(self, keep: set[str] = frozenset()) -> None:
        for path in [p for p in self._readers if p not in keep]:
            f = self._readers.pop(path)
            os.close(f) if self.local else f.close()
