"""Where shard sets live: a local directory or `s3://bucket/prefix`, both through `pyarrow.fs`.

`resolve(uri)` gives a `Location` (filesystem + root path) with the handful of operations the
shard writer and reader need. Every filesystem failure is turned into a `ShardError` that names
the URI and says what to do (missing bucket, refused credentials, unreachable endpoint, ...).

S3: `pyarrow.fs.S3FileSystem` with the endpoint from the `s3_endpoint` argument (the
`data.s3_endpoint` config key), else `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`; region and
credentials come from the standard AWS environment (`AWS_REGION`/`AWS_DEFAULT_REGION`,
`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`, `AWS_PROFILE`, ~/.aws).
A process that used S3 drops its filesystems and calls `pyarrow.fs.finalize_s3()` at exit
(registered here), so it does not abort while tearing down.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import posixpath
import threading
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow.fs as pafs

from pipeline.errors import ShardError

_S3_LOCK = threading.Lock()
_S3_USED = False


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def s3_endpoint_from_env() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


# Callbacks that drop objects holding S3 clients (e.g. the shard reader's table cache); the
# readers register them here so this module never imports its callers.
_EXIT_CLEANUPS: list[Callable[[], None]] = []


def on_s3_exit(cleanup: Callable[[], None]) -> None:
    """Run `cleanup` before the AWS SDK is shut down at interpreter exit."""
    if cleanup not in _EXIT_CLEANUPS:
        _EXIT_CLEANUPS.append(cleanup)


def _finalize_s3_at_exit() -> None:
    """Drop cached tables and S3 clients, then shut the AWS SDK down (avoids aborts at exit)."""
    import gc

    for cleanup in _EXIT_CLEANUPS:
        with contextlib.suppress(Exception):  # best effort during interpreter shutdown
            cleanup()
    gc.collect()
    with contextlib.suppress(Exception):
        pafs.finalize_s3()


def _s3_filesystem(endpoint: str | None) -> pafs.S3FileSystem:
    global _S3_USED
    kwargs: dict = {"connect_timeout": 5, "request_timeout": 30}
    if endpoint:
        if "://" not in endpoint:  # http or https? guessing would fail later, and obscurely
            raise ShardError(
                f"S3 endpoint {endpoint!r} has no scheme: add http:// (e.g. http://{endpoint}) "
                "or https:// in data.s3_endpoint / --s3-endpoint or AWS_ENDPOINT_URL"
            )
        parsed = urlparse(endpoint)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ShardError(
                f"S3 endpoint {endpoint!r} is not a URL like http://host:port: "
                "fix data.s3_endpoint / --s3-endpoint or AWS_ENDPOINT_URL"
            )
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    elif endpoint:
        kwargs["region"] = "us-east-1"  # S3-compatible stores rarely care; avoids a lookup
    with contextlib.suppress(AttributeError):  # very old pyarrow
        kwargs["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=3)
    with _S3_LOCK:
        if not _S3_USED:
            _S3_USED = True
            atexit.register(_finalize_s3_at_exit)
    return pafs.S3FileSystem(**kwargs)


@dataclass(frozen=True)
class Location:
    """A shard set's root: `fs` plus `root` (a path in that filesystem), and the URI as given."""

    uri: str
    fs: pafs.FileSystem
    root: str
    endpoint: str | None = None

    @property
    def is_s3(self) -> bool:
        return is_s3(self.uri)

    def path(self, name: str) -> str:
        """`name` under the root; "" is the root itself (a Location may name one file)."""
        if not name:
            return self.root
        return posixpath.join(self.root, name) if self.root else name

    def display(self, name: str | None = None) -> str:
        if not name:
            return self.uri
        return self.uri.rstrip("/") + "/" + name

    # -- reads ---------------------------------------------------------------------------------
    def exists(self, name: str) -> bool:
        info = self._call("check", name, lambda: self.fs.get_file_info(self.path(name)))
        return info.type == pafs.FileType.File

    def size(self, name: str) -> int | None:
        info = self._call("check", name, lambda: self.fs.get_file_info(self.path(name)))
        return info.size if info.type == pafs.FileType.File else None

    def read_bytes(self, name: str) -> bytes:
        def read() -> bytes:
            with self.fs.open_input_stream(self.path(name)) as f:
                return f.read()

        return self._call("read", name, read)

    def list_names(self) -> list[str]:
        """Plain files directly under the root (no recursion)."""

        def ls() -> list[str]:
            sel = pafs.FileSelector(self.root, allow_not_found=True, recursive=False)
            return sorted(
                posixpath.basename(i.path)
                for i in self.fs.get_file_info(sel)
                if i.type == pafs.FileType.File
            )

        return self._call("list", None, ls)

    def root_exists(self) -> bool:
        if self.is_s3:
            return True  # prefixes always "exist"; a missing bucket shows up on the first call
        info = self._call("check", None, lambda: self.fs.get_file_info(self.root))
        return info.type == pafs.FileType.Directory

    # -- writes --------------------------------------------------------------------------------
    def ensure_root(self) -> None:
        if self.is_s3:
            self.check_bucket()
            return
        self._call("create", None, lambda: self.fs.create_dir(self.root, recursive=True))

    def write_bytes(self, name: str, data: bytes) -> None:
        def write() -> None:
            with self.fs.open_output_stream(self.path(name)) as f:
                f.write(data)

        self._call("write", name, write)

    def move(self, src: str, dst: str) -> None:
        """Rename within the root: atomic locally; copy-then-delete on S3 (the copy is atomic)."""
        self._call("rename", dst, lambda: self.fs.move(self.path(src), self.path(dst)))

    def delete(self, name: str) -> None:
        def rm() -> None:
            with contextlib.suppress(FileNotFoundError):
                self.fs.delete_file(self.path(name))

        self._call("delete", name, rm)

    def check_bucket(self) -> None:
        if not self.is_s3:
            return
        bucket = self.root.split("/", 1)[0]
        info = self._call("check", None, lambda: self.fs.get_file_info(bucket))
        if info.type == pafs.FileType.NotFound:
            raise _missing_bucket(self, bucket)

    # -- errors --------------------------------------------------------------------------------
    def _call(self, action: str, name: str | None, fn):
        try:
            return fn()
        except ShardError:
            raise
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise explain_os_error(self, action, name, exc) from exc


def _missing_bucket(loc: Location, bucket: str) -> ShardError:
    where = f" at {loc.endpoint}" if loc.endpoint else ""
    return ShardError(
        f"{loc.uri}: S3 bucket '{bucket}' does not exist{where}: create it "
        f"(aws s3 mb s3://{bucket}) or fix the bucket name in the URI"
    )


def explain_os_error(loc: Location, action: str, name: str | None, exc: OSError) -> ShardError:
    """Map a pyarrow/AWS failure to a message that says what went wrong and what to do."""
    target = loc.display(name)
    text = str(exc)
    low = text.lower()
    if loc.is_s3:
        bucket = loc.root.split("/", 1)[0]
        if "no_such_bucket" in low or "nosuchbucket" in low or "bucket does not exist" in low:
            return _missing_bucket(loc, bucket)
        if any(
            s in low
            for s in (
                "invalidaccesskeyid",
                "signaturedoesnotmatch",
                "access_denied",
                "accessdenied",
                "invalid_access_key_id",
                "forbidden",
                "403",
                "expiredtoken",
            )
        ):
            return ShardError(
                f"{target}: S3 refused the credentials while trying to {action} "
                f"({_first_line(text)}): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / "
                "AWS_SESSION_TOKEN or AWS_PROFILE, and that they may access bucket "
                f"'{bucket}'"
            )
        if any(s in low for s in ("curl", "connect", "network", "timed out", "timeout")):
            where = loc.endpoint or "the default AWS endpoint"
            return ShardError(
                f"{target}: could not reach S3 at {where} to {action} ({_first_line(text)}): "
                "check data.s3_endpoint / --s3-endpoint or AWS_ENDPOINT_URL and the network"
            )
    if isinstance(exc, PermissionError) or "permission denied" in low:
        return ShardError(f"{target}: permission denied while trying to {action}: {text}")
    return ShardError(f"{target}: could not {action}: {_first_line(text)}")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def resolve(uri: str, *, s3_endpoint: str | None = None) -> Location:
    """`/dir`, `rel/dir`, `file:///dir` or `s3://bucket/prefix` -> Location."""
    if not uri or not isinstance(uri, str):
        raise ShardError(f"shard set URI {uri!r} is empty: give a directory or s3://bucket/prefix")
    if is_s3(uri):
        rest = uri[len("s3://") :].strip("/")
        bucket = rest.split("/", 1)[0]
        if len(bucket) < 3:
            raise ShardError(
                f"{uri}: '{bucket}' is not a valid S3 bucket name (3-63 characters): "
                "use s3://bucket/prefix"
            )
        endpoint = s3_endpoint or s3_endpoint_from_env()
        return Location(uri=uri, fs=_s3_filesystem(endpoint), root=rest, endpoint=endpoint)
    if "://" in uri and not uri.startswith("file://"):
        scheme = uri.split("://", 1)[0]
        raise ShardError(
            f"{uri}: scheme '{scheme}://' is not supported: use a local directory or s3://bucket/prefix"
        )
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    return Location(uri=uri, fs=pafs.LocalFileSystem(), root=os.path.abspath(path))
