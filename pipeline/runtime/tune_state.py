"""SHELL: a sweep's Tune state is resumed only when metaray can prove it wrote it.

Ray Tune resumes a sweep by unpickling `tuner.pkl` and cloudpickled trial state from the sweep
directory (local or s3://): whoever can write there could run code as the next person who
resumes. So after every `tuner.fit()` (finished, failed or interrupted) metaray records an
HMAC-SHA256 of every file Tune left in the sweep directory (`metaray-digests.json`, beside
them), keyed by a secret kept outside the storage, under the user's config directory
(`$XDG_CONFIG_HOME/metaray/tune-state.key`, else `~/.config/...`, mode 0600). Before
`Tuner.restore` every file there must match its digest; otherwise the sweep is refused with
a message, and nothing is unpickled. `trials/` (metaray's own checkpoints: safetensors and
JSON) and `best_config.yaml` (written after the digests, read with yaml.safe_load) are left
out: neither is ever unpickled.

A sweep whose driver was SIGKILLed has state written after its last digests: it is refused
too. Start it over (delete the directory or pick another tune.name), or, if nobody else can
write to that storage, accept it once with `METARAY_TRUST_TUNE_STATE=1`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

import pyarrow.fs as pafs

from pipeline.errors import MetarayError

DIGESTS = "metaray-digests.json"
# Left out: metaray's own checkpoints (safetensors + JSON) and the best config (YAML, read only
# with yaml.safe_load), which metaray writes after the digests; neither is ever unpickled.
SKIP = ("trials/", DIGESTS, "best_config.yaml")
TRUST_ENV = "METARAY_TRUST_TUNE_STATE"


class TuneStateError(MetarayError):
    """Tune state that metaray cannot prove it wrote: not resumed (names the file and the fix)."""


def key_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(Path.home(), ".config")
    return Path(base) / "metaray" / "tune-state.key"


def _key() -> bytes:
    path = key_path()
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())


def _files(loc) -> dict[str, str]:
    """relative name -> path in `loc.fs`, for every file under the sweep dir but `SKIP`."""
    sel = pafs.FileSelector(loc.root, recursive=True, allow_not_found=True)
    out = {}
    for info in loc.fs.get_file_info(sel):
        rel = info.path[len(loc.root) :].lstrip("/")
        if info.type == pafs.FileType.File and not rel.startswith(SKIP):
            out[rel] = info.path
    return out


def _digest(key: bytes, loc, path: str) -> str:
    mac = hmac.new(key, digestmod=hashlib.sha256)
    with loc.fs.open_input_stream(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            mac.update(block)
    return mac.hexdigest()


def sign(sweep_dir: str) -> int:
    """Record the digests of the sweep's Tune state; returns how many files."""
    from pipeline.data.storage import resolve

    loc = resolve(sweep_dir)
    key = _key()
    digests = {rel: _digest(key, loc, p) for rel, p in sorted(_files(loc).items())}
    if digests:
        tmp = f"{DIGESTS}.tmp"
        loc.write_bytes(tmp, json.dumps(digests, indent=0).encode())
        loc.move(tmp, DIGESTS)
    return len(digests)


def verify(sweep_dir: str) -> None:
    """Raise `TuneStateError` unless every Tune state file matches its recorded digest."""
    from pipeline.data.storage import resolve

    if os.environ.get(TRUST_ENV) == "1":
        return
    loc = resolve(sweep_dir)
    fix = (
        f"delete {sweep_dir} (or use another tune.name) to start the sweep over; only if nobody "
        f"else can write to that storage, accept it once with {TRUST_ENV}=1"
    )
    if not loc.exists(DIGESTS):
        raise TuneStateError(
            f"{sweep_dir}: Tune state without metaray's digests ({DIGESTS}), so metaray cannot "
            "tell that it wrote it, and resuming would unpickle it (tuner.pkl runs code): "
            f"not resumed; {fix}"
        )
    try:
        recorded = json.loads(loc.read_bytes(DIGESTS))
    except ValueError:
        recorded = {}
    key = _key()
    for rel, path in sorted(_files(loc).items()):
        want = recorded.get(rel) if isinstance(recorded, dict) else None
        if not (isinstance(want, str) and hmac.compare_digest(want, _digest(key, loc, path))):
            why = "is not in" if want is None else "does not match"
            raise TuneStateError(
                f"{loc.display(rel)} {why} the digests metaray recorded when it last ran this "
                f"sweep ({DIGESTS}, keyed by {key_path()}): it was changed or added since, "
                f"and resuming would unpickle it: not resumed; {fix}"
            )
