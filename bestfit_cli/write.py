"""Write: packed rows to fixed-length shards, atomically, with the manifest last.

``PackedRows`` is what a window's plan becomes once tokens are gathered. An ``OutputFormat`` (``formats/``, one
module per format) turns rows into the bytes of one shard. ``ShardWriter`` owns the output folder: each
shard is written to a temporary name and renamed into place, and ``manifest.json`` is written last, so a folder
without a manifest is never a finished output. On a local disk each file is fsynced before its rename and the folder
before and after the manifest's, so that holds after a power loss too; an object store's put is atomic already.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import posixpath
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from .errors import OutputError
from .formats import FORMATS, OutputFormat
from .fs import filesystem_for

MANIFEST = "manifest.json"
STATS = "stats.json"
TMP_PREFIX = ".bestfit-tmp-"


@dataclass(frozen=True)
class FileInfo:
    path: str
    bytes: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "bytes": self.bytes, "sha256": self.sha256}


@dataclass(frozen=True)
class ShardInfo:
    path: str
    rows: int
    bytes: int
    sha256: str
    files: tuple[FileInfo, ...] = ()  # the companion files of a many-file format (Megatron's .idx, ...)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"path": self.path, "rows": self.rows, "bytes": self.bytes, "sha256": self.sha256}
        if self.files:
            data["files"] = [f.to_json() for f in self.files]
        return data


def _describe(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _write_fix(exc: BaseException) -> str:
    """What to do about a failed write, after its cause: only a full disk is fixed by freeing space."""
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "free disk space or choose another OUT, then rerun with --overwrite"
    if code == errno.ENOENT:
        return ("OUT or its temporary folder was removed while bestfit wrote to it (by another process?); rerun with "
                "--overwrite")
    if code == errno.EIO:
        return "the disk reported an I/O error: check the device or the mount, then rerun with --overwrite"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "OUT is not writable: check its permissions and mount, or choose another OUT"
    return "check OUT and the disk it is on (free space, permissions), then rerun with --overwrite"


class ShardWriter:
    """The output folder of one run: shards go to a temp name, then into place; the manifest goes last."""

    def __init__(self, out: str, *, overwrite: bool = False) -> None:
        self.out = out
        self.fs, self.root = filesystem_for(out)
        # Only a local disk has a page cache to flush; pyarrow's object stores (S3, GCS) make a put durable and
        # atomic on their own, and have no folders to sync.
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.tmp = posixpath.join(self.root, f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}")
        self.overwrite = overwrite

    def __enter__(self) -> ShardWriter:
        self._prepare()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.fs.delete_dir(self.tmp)
        except (OSError, pa.ArrowException):
            pass

    def _prepare(self) -> None:
        if not self.out.strip():
            raise OutputError("OUT is an empty string", fix="give the folder to write to")
        try:
            info = self.fs.get_file_info(self.root)
            if info.type == pafs.FileType.File:
                raise OutputError(f"{self.out}: OUT is a file", fix="give a folder for OUT")
            if info.type == pafs.FileType.Directory:
                existing = self.fs.get_file_info(pafs.FileSelector(self.root))
                if existing and not self.overwrite:
                    raise OutputError(f"{self.out}: OUT is not empty",
                                      fix="pass --overwrite to replace it, or choose an empty folder")
                foreign = sorted(posixpath.basename(e.path) for e in existing
                                 if not _written_by_bestfit(posixpath.basename(e.path)))
                if foreign:
                    # --overwrite replaces an earlier output; it never deletes what bestfit did not write.
                    raise OutputError(f"{self.out}: OUT holds files bestfit did not write ({', '.join(foreign[:3])}"
                                      f"{', ...' if len(foreign) > 3 else ''})",
                                      fix="choose another OUT, or remove those files yourself")
                # The manifest goes first, so an interrupted overwrite never looks complete.
                for entry in sorted(existing, key=lambda e: posixpath.basename(e.path) != MANIFEST):
                    if entry.type == pafs.FileType.Directory:
                        self.fs.delete_dir(entry.path)
                    else:
                        self.fs.delete_file(entry.path)
                self._sync(self.root)  # the old manifest is gone for good before any new shard appears
            self.fs.create_dir(self.tmp, recursive=True)
        except (OSError, pa.ArrowException) as exc:
            raise OutputError(f"{self.out}: cannot write here ({_describe(exc)})",
                              fix="choose a folder you can write to") from None

    def _sync(self, path: str) -> None:
        """Flush a local file's bytes, or a local folder's entries (its renames), to the disk."""
        if not self.local:
            return
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _write_bytes(self, name: str, data: bytes) -> None:
        tmp_path = posixpath.join(self.tmp, name)
        try:
            with self.fs.open_output_stream(tmp_path) as stream:
                stream.write(data)
            self._sync(tmp_path)  # the bytes reach the disk before the name does
            if name == MANIFEST:
                self._sync(self.root)  # every shard's rename is on disk before the manifest can be
            self.fs.move(tmp_path, posixpath.join(self.root, name))
            if name == MANIFEST:
                self._sync(self.root)
        except (OSError, pa.ArrowException) as exc:
            raise OutputError(f"{self.out}: writing {name} failed ({_describe(exc)})", fix=_write_fix(exc)) from None

    def write_shard(self, name: str, data: bytes, rows: int, companions: dict[str, bytes] | None = None) -> ShardInfo:
        """Writes the shard ``name`` and its companion files (by name), each atomically, the main file last."""
        files = []
        for companion, content in (companions or {}).items():
            self._write_bytes(companion, content)
            files.append(FileInfo(companion, len(content), hashlib.sha256(content).hexdigest()))
        self._write_bytes(name, data)
        return ShardInfo(name, rows, len(data), hashlib.sha256(data).hexdigest(), tuple(files))

    def write_json(self, name: str, payload: dict[str, Any]) -> tuple[int, str]:
        """Writes ``payload`` as ``name``; returns its size and sha256 (the manifest records them for stats.json)."""
        data = (json.dumps(payload, indent=2, sort_keys=False) + "\n").encode()
        self._write_bytes(name, data)
        return len(data), hashlib.sha256(data).hexdigest()


def _written_by_bestfit(name: str) -> bool:
    """Names a bestfit output folder holds: what ``--overwrite`` may delete."""
    suffixes = tuple(s for f in FORMATS.values() for s in (f.suffix, *f.companion_suffixes))
    shard = name.startswith("part-") and name.endswith(suffixes)
    return shard or name in (MANIFEST, STATS) or name.startswith(TMP_PREFIX)


def shard_name(window: int, part: int, fmt: OutputFormat) -> str:
    return f"part-{window:05d}-{part:04d}{fmt.suffix}"


def companion_name(shard: str, fmt: OutputFormat, suffix: str) -> str:
    """The name of a shard's companion file: the shard's stem with the companion's suffix."""
    return shard.removesuffix(fmt.suffix) + suffix


def read_manifest(out: str) -> dict[str, Any] | None:
    """The manifest of a finished output folder, or None when the folder is incomplete or absent."""
    fs, root = filesystem_for(out)
    try:
        with fs.open_input_stream(posixpath.join(root, MANIFEST)) as stream:
            data: dict[str, Any] = json.loads(stream.read())
            return data
    except (FileNotFoundError, OSError, pa.ArrowException):
        return None
