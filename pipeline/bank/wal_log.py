"""The bank's write-ahead log: segment files under `<root>/wal`, appended by group commit and
replayed after a snapshot's `wal_upto`.

    wal/<first seq>.wal            WAL segment (format 3; format 2 still read; wal_frames.py)
    wal/<seq>.safetensors          WAL record (format 1, before group commit; read)

GROUP COMMIT: `append_group` writes a group's frame in ONE write and ONE fdatasync before any
batch of the group is acknowledged, so puts cost one fsync (and one encode) per group, not one
create + fsync + rename + directory fsync each. A crash mid-append can only tear a frame that
was never acknowledged (its fsync had not returned); replay drops a torn LAST frame with a
warning and `truncate_torn` cuts it off. On S3, where nothing appends, each group is its own
segment object written by one PUT.
"""

from __future__ import annotations

import os

from pipeline.bank.formats import SEQ_WIDTH, st_header
from pipeline.bank.root_files import RootFiles, fsync_dir
from pipeline.bank.wal_frames import (
    FRAME,
    WAL_MAGIC,
    WAL_SUFFIX,
    decode_record,
    decode_segment,
    frame_parts,
)

SEGMENT_BYTES = 256 << 20  # roll to a new segment past this (bounds what one restore reads)


class WalLog:
    """The WAL under one root: the open local segment (if any) and the segment files."""

    def __init__(self, files: RootFiles) -> None:
        self.files = files
        self._seg: int | None = None  # fd of the open local WAL segment
        self._seg_bytes = 0
        self._seg_path = ""

    def _path(self, name: str) -> str:
        return f"{self.files.root}/wal/{name}"

    def names(self) -> list[tuple[int, str]]:
        """(first seq, base name) of every WAL file, oldest first: v2 segments (`<seq>.wal`)
        and v1 records (`<seq>.safetensors`, one batch each: banks written before group commit)."""
        out = []
        for info in self.files.list("wal"):
            name = info.base_name
            if ".tmp-" not in name and name.endswith((WAL_SUFFIX, ".safetensors")):
                out.append((int(name.split(".")[0]), name))
        return sorted(out)

    def append_group(
        self, records: list[tuple[int, dict]], meta: dict | None = None
    ) -> tuple[str, int]:
        """GROUP COMMIT: the whole group in one frame, one write, then ONE fsync, before any of
        its batches is acknowledged. Local: appended to the open segment (a new segment, made
        durable in its directory, after a restart, a snapshot or `SEGMENT_BYTES`); S3: the
        group is one segment object written by one PUT. The group is one frame with its own
        CRC, so a crash mid-append leaves at worst a torn last frame, which recovery drops
        (never acknowledged: the fsync had not returned). `records`: consecutive seqs, in order.
        Returns (file, byte offset of the group's first parameter row): the rows' locators."""
        head, payload = frame_parts(records[0][0], [batch for _, batch in records], meta)
        tensors, _, body = st_header(payload)
        rows_at = FRAME.size + body + tensors["params"]["data_offsets"][0]
        size = len(head) + len(payload)
        if not self.files.local:
            name = self._path(f"{records[0][0]:0{SEQ_WIDTH}d}{WAL_SUFFIX}")
            with self.files.fs.open_output_stream(name) as f:
                f.write(WAL_MAGIC + head)
                f.write(payload)  # one stream: one PUT, whole or absent
            return name, len(WAL_MAGIC) + rows_at
        if self._seg is None or self._seg_bytes >= SEGMENT_BYTES:
            self._open_segment(records[0][0])
        at = self._seg_bytes + rows_at
        done = os.writev(self._seg, [head, payload])
        if done < size:  # O_APPEND: each write lands at the end; a large one may come back short
            view = memoryview(head + payload)[done:]
            while view:
                view = view[os.write(self._seg, view) :]
        os.fdatasync(self._seg)  # the one fsync of the group (file size included)
        self._seg_bytes += size
        return self._seg_path, at

    def _open_segment(self, first_seq: int) -> None:
        self.roll()
        path = self._path(f"{first_seq:0{SEQ_WIDTH}d}{WAL_SUFFIX}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        os.write(fd, WAL_MAGIC)
        os.fsync(fd)
        fsync_dir(os.path.dirname(path))  # the segment's name is durable before any ack
        self._seg, self._seg_bytes, self._seg_path = fd, len(WAL_MAGIC), path

    def roll(self) -> None:
        """Close the open segment: the next group starts a new one (so old ones can be
        collected after a snapshot)."""
        if self._seg is not None:
            os.close(self._seg)
            self._seg = None

    def read_file(self, name: str) -> tuple[list[tuple[int, dict]], int | None]:
        """(records, valid byte length if the file ends in a torn frame else None)."""
        path = self._path(name)
        data = self.files.read(path)
        label = f"{self.files.uri}/wal/{name}"
        if name.endswith(".safetensors"):
            return [(int(name.split(".")[0]), decode_record(data, label, path=path))], None
        return decode_segment(data, label, path)

    def truncate_torn(self, name: str, valid: int) -> None:
        """Cut a torn last frame off a local segment (durably; a segment left with no record is
        removed, freeing its name, its first seq, for the next append). Only the bank that owns
        the WAL does this (`repair_torn` after its restore), never a restore of an export."""
        if not self.files.local:
            return  # an S3 segment is one PUT: whole or absent, never torn by a crash
        path = self._path(name)
        if valid <= len(WAL_MAGIC):
            os.unlink(path)
            fsync_dir(os.path.dirname(path))
            return
        os.truncate(path, valid)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def read_after(
        self, upto: int, warnings: list[str]
    ) -> tuple[list[tuple[int, dict]], list[tuple[str, int]]]:
        """Every WAL record after `upto`, in order; torn tails dropped (with a warning), and a
        warning when the sequence has a gap (records lost between a snapshot and the WAL)."""
        files, records, torn = self.names(), [], []
        for i, (_, name) in enumerate(files):
            if i + 1 < len(files) and files[i + 1][0] <= upto + 1:
                continue  # every record of this file is in the snapshot
            got, valid = self.read_file(name)
            records.extend((seq, rec) for seq, rec in got if seq > upto)
            if valid is not None:
                torn.append((name, valid))
                warnings.append(
                    f"bank WAL segment {self.files.uri}/wal/{name} ends in a torn record (a "
                    f"crash mid-append, never acknowledged): dropped it, kept the {len(got)} "
                    "before it"
                )
        expect = upto + 1
        for seq, _ in records:
            if seq != expect:
                warnings.append(
                    f"bank WAL under {self.files.uri}/wal has record {seq} where {expect} was "
                    f"due (the restored snapshot covers up to {upto}): records in between are lost"
                )
            expect = seq + 1
        return records, torn

    def drop_upto(self, floor: int) -> None:
        """Delete the WAL files whose every record is <= `floor` (in the oldest kept snapshot)."""
        files = self.names()
        for i, (first, name) in enumerate(files):
            later = i + 1 < len(files) and files[i + 1][0] <= floor + 1  # all of it <= floor
            if later or (name.endswith(".safetensors") and first <= floor):
                self.files.fs.delete_file(self._path(name))
