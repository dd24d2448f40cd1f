"""Write: packed rows to fixed-length shards, staged beside the old output and swapped in with the manifest last.

``PackedRows`` is what a window's plan becomes once tokens are gathered. An ``OutputFormat`` (``formats/``, one
module per format) turns rows into the bytes of one shard. ``ShardWriter`` owns the output folder for one
run: it locks OUT, writes every shard and the report to its own temporary folder, and ``commit`` swaps the new
output in: the new shards move into OUT (their names carry a digest of their bytes, so they never replace an old
shard with other bytes), then the new manifest replaces the old one in one rename, then the old shards and the
temporary folder go. At every instant OUT holds the old manifest with all its shards or the new one with all its
shards; a failure before the swap leaves the old output as it was (docs/guarantees.md). On a local disk each file
is fsynced before its rename and the folder before and after the manifest's, so that holds after a power loss too.
An object store has no rename: there each shard is put straight into OUT under its final name (claimed in the
temporary folder first), the manifest put is the commit, and a refreshed marker (``outdir.StoreLock``) stands in
for the lock (docs/guarantees.md#on-an-object-store).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import posixpath
import signal
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from .errors import BestfitError, OutputError
from .formats import OutputFormat
from .fs import filesystem_for, storage_error
from .outdir import (
    CLAIM_PREFIX,
    MANIFEST,
    NEXT,
    PREVIOUS,
    STATS,
    TMP_PREFIX,
    OutLock,
    StoreLock,
    companion_name,
    listed_sha256,
    manifest_files,
    refuse_foreign,
    shard_name,
    signals_deferred,
    survey,
)

__all__ = ["MANIFEST", "STATS", "TMP_PREFIX", "FileInfo", "ShardInfo", "ShardStager", "ShardWriter", "companion_name",
           "kill_point"]


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

    @property
    def all_files(self) -> list[tuple[str, str]]:
        """(name, sha256) of every file of the shard, companions first: the order they move into OUT."""
        return [*((f.path, f.sha256) for f in self.files), (self.path, self.sha256)]


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


def kill_point(name: str) -> None:
    """Test hook (tests/test_faults.py, docs/guarantees.md): ``BESTFIT_TEST_KILL_AT=name`` SIGKILLs the process here.

    ``BESTFIT_TEST_STEP_DELAY=SECONDS`` sleeps at each step of the swap, so randomly timed kills can land in it.
    ``BESTFIT_TEST_KILL_ONCE=name:FILE`` SIGKILLs the first process to get here that creates FILE: a worker that
    dies once, so the task run again (tests/test_ray.py) gets past it.
    """
    if os.environ.get("BESTFIT_TEST_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
    once = os.environ.get("BESTFIT_TEST_KILL_ONCE", "")
    if once.startswith(name + ":"):
        try:
            os.close(os.open(once[len(name) + 1:], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os.kill(os.getpid(), signal.SIGKILL)
    if name.startswith("swap") and os.environ.get("BESTFIT_TEST_STEP_DELAY"):
        time.sleep(float(os.environ["BESTFIT_TEST_STEP_DELAY"]))


class ShardStager:
    """Writes a run's shards: the part of ``ShardWriter`` a window needs, and all that a window packed in another
    process (a Ray task) gets. On a local disk a shard goes to the run's temporary folder (``commit`` renames it into
    OUT); on an object store, which has no rename, it is put straight into OUT under its final name, claimed in the
    temporary folder first. It pickles as its paths and the old manifest's digests; the filesystem is opened again
    where it is used, with that machine's credentials."""

    def __init__(self, out: str, root: str, tmp: str, fs: pafs.FileSystem | None = None) -> None:
        self.out = out
        self.root = root
        self.tmp = tmp
        self.old_sha: dict[str, Any] = {}  # what the old manifest lists, with each file's sha256 (set before the run)
        self.put: list[str] = []  # object store: the files this process put into OUT (each claimed first)
        self._fs = fs
        # Shards are flushed to the disk by a thread of their own, so the threads that encode shards do not wait on
        # the disk; ``await_syncs`` waits for every flush (the commit before the first rename, a task before it
        # reports its window done).
        self._syncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bestfit-sync")  # a thread once used
        self._syncs: list[tuple[str, Future[None]]] = []

    def __getstate__(self) -> dict[str, Any]:
        return {"out": self.out, "root": self.root, "tmp": self.tmp, "old_sha": self.old_sha}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["out"], state["root"], state["tmp"])  # type: ignore[misc]
        self.old_sha = state["old_sha"]

    @property
    def fs(self) -> pafs.FileSystem:
        if self._fs is None:
            self._fs = filesystem_for(self.out)[0]
        return self._fs

    @property
    def local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def sync(self, path: str) -> None:
        """Flush a local file's bytes, or a local folder's entries (its renames), to the disk."""
        if not self.local:
            return
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def stage(self, name: str, data: bytes | memoryview, *, sync_later: bool = False) -> None:
        """Write ``name`` into the temporary folder, its bytes on the disk before it can be renamed anywhere.

        ``sync_later``: the flush runs on the sync thread; ``await_syncs`` waits for it.
        """
        tmp_path = posixpath.join(self.tmp, name)
        try:
            with self.fs.open_output_stream(tmp_path) as stream:
                stream.write(data)
            if sync_later and self.local:
                self._syncs.append((name, self._syncer.submit(self.sync, tmp_path)))
            else:
                self.sync(tmp_path)
        except (OSError, pa.ArrowException) as exc:
            raise self.failed(name, exc) from None

    def await_syncs(self) -> None:
        """Every shard staged so far is on the disk (or the first flush that failed is an ``OutputError``)."""
        for name, flushed in self._syncs:
            try:
                flushed.result()
            except OSError as exc:
                raise self.failed(name, exc) from None
        self._syncs.clear()

    def close(self) -> None:
        """No flush still running (on files about to be renamed or removed); the sync thread ends."""
        self._syncer.shutdown(wait=True)

    def failed(self, name: str, exc: BaseException) -> BestfitError:
        failure = None if self.local else storage_error(posixpath.join(self.out, name), exc)
        if failure is not None:
            return failure
        return OutputError(f"{self.out}: writing {name} failed ({_describe(exc)})", fix=_write_fix(exc))

    def write_shard(self, window: int, part: int, fmt: OutputFormat, data: bytes | memoryview, rows: int,
                    companions: dict[str, bytes] | None = None) -> ShardInfo:
        """Stage one shard and its companion files (by suffix), named after the window, the part and the bytes of
        all of them (``outdir.shard_name``), so two shards of the same name always have the same files: a task run
        again after a crash writes the same names with the same bytes."""
        sha256 = hashlib.sha256(data).hexdigest()
        digests = {suffix: hashlib.sha256(content).hexdigest() for suffix, content in (companions or {}).items()}
        digest = sha256 if not digests else hashlib.sha256(
            "".join([sha256, *(f"{s}:{d}" for s, d in sorted(digests.items()))]).encode()).hexdigest()
        name = shard_name(window, part, digest, fmt.suffix)
        files = []
        for suffix, content in (companions or {}).items():
            companion = companion_name(name, fmt, suffix)
            self._write_shard_file(companion, content, digests[suffix])
            files.append(FileInfo(companion, len(content), digests[suffix]))
        self._write_shard_file(name, data, sha256)
        return ShardInfo(name, rows, len(data), sha256, tuple(files))

    def _write_shard_file(self, name: str, data: bytes | memoryview, sha256: str) -> None:
        """Stage a shard's file (a local disk), or, on an object store, which has no rename (a "move" is a copy and
        a delete), put it straight into OUT under its final name: the name carries a digest of the bytes, so it
        never replaces an old shard with other bytes, and no manifest lists it until the commit. A claim in the
        temporary folder is put first, so whatever a kill leaves in OUT is known to be this run's."""
        if self.local:
            self.stage(name, data, sync_later=True)
            return
        if name in self.old_sha:
            if self.old_sha[name] == sha256:
                return  # the old output's file of that name holds these very bytes: it stays, shared by both
            raise OutputError(f"{self.out}: the old output's {name} has other bytes than the new file of that name",
                              fix="move the old output away, or check OUT/manifest.json")
        try:
            with self.fs.open_output_stream(posixpath.join(self.tmp, CLAIM_PREFIX + name)):
                pass
            self.put.append(name)  # before the put: a put that fails halfway is removed too
            with self.fs.open_output_stream(posixpath.join(self.root, name)) as stream:
                stream.write(data)
        except (OSError, pa.ArrowException) as exc:
            raise self.failed(name, exc) from None
        kill_point("store-shard")

    def claimed(self) -> set[str]:
        """Object store: every file a process of this run (this one, or a Ray task) claimed, hence may have put into
        OUT; what a rollback removes."""
        try:
            listing = self.fs.get_file_info(pafs.FileSelector(self.tmp, allow_not_found=True))
        except (OSError, pa.ArrowException):
            listing = []
        names = {posixpath.basename(e.path).removeprefix(CLAIM_PREFIX) for e in listing
                 if posixpath.basename(e.path).startswith(CLAIM_PREFIX)}
        return names | set(self.put)


class ShardWriter:
    """The output folder of one run: locked, shards staged in a temporary folder, swapped in by ``commit``."""

    def __init__(self, out: str, *, overwrite: bool = False) -> None:
        self.out = out
        fs, self.root = filesystem_for(out)
        # Only a local disk has a page cache to flush and a lock to take; pyarrow's object stores (S3, GCS) make a put
        # durable and atomic on their own, and have no folders to sync.
        self.local = isinstance(fs, pafs.LocalFileSystem)
        self.tmp = posixpath.join(self.root, f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}")
        self.stager = ShardStager(out, self.root, self.tmp, fs)  # writes the shards, here or in a Ray task
        self.overwrite = overwrite
        self._lock = OutLock(out, self.root)
        self._store_lock = None if self.local else StoreLock(out, self.fs, self.root)
        self._new_names: set[str] = set()  # every file of the new output's shards (set by commit)
        self._created: list[str] = []  # folders this run made (OUT and missing parents), removed if it fails
        self._previous: bytes | None = None  # the old output's manifest, as read
        self._old_files: set[str] = set()  # what it lists
        self._moved: list[str] = []  # new shards moved into OUT so far
        self._state = "writing"  # then "moving", "renamed" (manifest in place), "committed" (durable), "done"

    @property
    def fs(self) -> pafs.FileSystem:
        """OUT's filesystem, the stager's too (one filesystem for the run)."""
        return self.stager.fs

    @fs.setter
    def fs(self, fs: pafs.FileSystem) -> None:
        self.stager._fs = fs

    def __enter__(self) -> ShardWriter:
        try:
            self._prepare()
        except BaseException:
            self._close(failed=True)
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._close(failed=exc is not None)

    # -------------------------------------------------------------------------------------------- before the run

    def _prepare(self) -> None:
        if not self.out.strip():
            raise OutputError("OUT is an empty string", fix="give the folder to write to")
        try:
            info = self.fs.get_file_info(self.root)
            if info.type == pafs.FileType.File:
                raise OutputError(f"{self.out}: OUT is a file", fix="give a folder for OUT")
            if self.local:
                self._create_folders()
                self._lock.acquire()  # before looking inside: a busy OUT is refused as busy, not as "not empty"
            if self._store_lock is not None:
                self._store_lock.acquire()
            if info.type == pafs.FileType.Directory or self.local:
                self._check_contents()
            self.fs.create_dir(self.tmp, recursive=True)
        except (OSError, pa.ArrowException) as exc:
            failure = None if self.local else storage_error(self.out, exc)
            if failure is not None:
                raise failure from None
            raise OutputError(f"{self.out}: cannot write here ({_describe(exc)})",
                              fix="choose a folder you can write to") from None

    def _create_folders(self) -> None:
        missing = []
        folder = self.root
        while not os.path.lexists(folder):
            missing.append(folder)
            folder = os.path.dirname(folder)
        for folder in reversed(missing):
            try:
                os.mkdir(folder)
            except FileExistsError:
                continue  # made by someone else just now: not ours to remove
            self._created.append(folder)

    def _check_contents(self) -> None:
        contents = survey(self.fs, self.root)
        if contents.empty:
            return
        if not self.overwrite:
            raise OutputError(f"{self.out}: OUT is not empty",
                              fix="pass --overwrite to replace an earlier bestfit output, or choose an empty folder")
        refuse_foreign(self.out, contents)
        # What an interrupted run left goes now; the finished output stays until the new one replaces it.
        for name in sorted(contents.leftovers):
            self.fs.delete_file(posixpath.join(self.root, name))
        for name in contents.temp_folders:
            self._remove_folder(posixpath.join(self.root, name))
        self._previous = contents.manifest
        self.stager.old_sha = listed_sha256(contents.manifest) if contents.manifest is not None else {}
        self._old_files = (manifest_files(contents.manifest) or set()) if contents.manifest is not None else set()

    # -------------------------------------------------------------------------------------------- during the run

    def _sync(self, path: str) -> None:
        self.stager.sync(path)

    def _stage(self, name: str, data: bytes | memoryview) -> None:
        self.stager.stage(name, data)

    def _failed(self, name: str, exc: BaseException) -> BestfitError:
        return self.stager.failed(name, exc)

    def write_shard(self, window: int, part: int, fmt: OutputFormat, data: bytes | memoryview, rows: int,
                    companions: dict[str, bytes] | None = None) -> ShardInfo:
        """``ShardStager.write_shard``: one shard and its companion files, staged (or put, on an object store)."""
        return self.stager.write_shard(window, part, fmt, data, rows, companions)

    # -------------------------------------------------------------------------------------------- the swap

    def write_json(self, name: str, payload: dict[str, Any]) -> tuple[int, str]:
        """Stage ``payload`` as ``name`` (``stats.json``; it moves into OUT with the swap); returns its size and
        sha256, which the manifest records."""
        data = _json_bytes(payload)
        self._stage(name, data)
        return len(data), hashlib.sha256(data).hexdigest()

    def commit(self, shards: Sequence[ShardInfo], manifest: dict[str, Any]) -> None:
        """Swap the staged output in for the old one (or into an empty OUT); see the module's docstring."""
        old_sha = self.stager.old_sha
        new_files = [entry for shard in shards for entry in shard.all_files]
        self._new_names = {name for name, _ in new_files}
        if not self.local:
            self._commit_to_store(_json_bytes(manifest))
            return
        for name, sha256 in new_files:
            if name in old_sha and old_sha[name] != sha256:
                raise OutputError(f"{self.out}: the old output's {name} has other bytes than the new file of that "
                                  "name", fix="move the old output away, or check OUT/manifest.json")
        self.stager.await_syncs()
        # The journal (new manifest, and the one it replaces) reaches the disk before any new name appears in OUT, so
        # whatever a crash leaves, the next run and verify can tell which files were this run's.
        self._stage(MANIFEST, _json_bytes(manifest))
        self._stage(NEXT, _json_bytes(manifest))
        if self._previous is not None:
            self._stage(PREVIOUS, self._previous)
        try:
            self._sync(self.tmp)
            self._state = "moving"
            # Each step is recorded before it is taken: a signal's exception (Ctrl-C, SIGTERM) can come between
            # a rename and the next statement, and the roll back must then still undo that rename.
            for name, _ in new_files:
                kill_point("swap-shard")
                self._moved.append(name)
                self._move(name)
            self._sync(self.root)  # every new shard's name is on the disk before the manifest can be
            kill_point("swap-manifest")
            self._state = "renamed"
            self._move(MANIFEST)
            self._sync(self.root)
        except (OSError, pa.ArrowException) as exc:
            raise self._failed(MANIFEST, exc) from None
        self._state = "committed"
        kill_point("swap-committed")
        self._finish()

    def _commit_to_store(self, manifest: bytes) -> None:
        """An object store's commit: every shard is in OUT already; the journal goes to the temporary folder, then
        one put of ``manifest.json`` replaces the old manifest (a put is atomic: a reader sees the old one or the
        new one, whole). Before it, the run marker is read again: a run whose marker another run replaced stops."""
        self._stage(NEXT, manifest)
        if self._previous is not None:
            self._stage(PREVIOUS, self._previous)
        assert self._store_lock is not None
        kill_point("swap-manifest")
        try:
            ours = self._store_lock.still_ours()
        except (OSError, pa.ArrowException) as exc:
            raise self._failed(MANIFEST, exc) from None
        if not ours:
            raise OutputError(f"{self.out}: another bestfit run started writing to OUT while this one ran; this run "
                              "did not commit (its shards are left for that run or the next --overwrite)",
                              fix="let the other run finish, then verify OUT; never run two packs on one OUT")
        self._state = "moving"
        try:
            self._put_in_out(MANIFEST, manifest)
            self._state = "renamed"
        except (OSError, pa.ArrowException) as exc:
            raise self._failed(MANIFEST, exc) from None
        self._state = "committed"
        kill_point("swap-committed")
        self._finish()

    def _put_in_out(self, name: str, data: bytes) -> None:
        with self.fs.open_output_stream(posixpath.join(self.root, name)) as stream:
            stream.write(data)

    def _move(self, name: str) -> None:
        self.fs.move(posixpath.join(self.tmp, name), posixpath.join(self.root, name))

    def _finish(self) -> None:
        """After the commit: the new report in place, the old shards gone."""
        try:
            if self.fs.get_file_info(posixpath.join(self.tmp, STATS)).type == pafs.FileType.File:
                self._move(STATS)
            new = set(self._moved) | self._new_names | {MANIFEST, STATS}
            for name in sorted(self._old_files - new):
                kill_point("swap-cleanup")
                if self.fs.get_file_info(posixpath.join(self.root, name)).type == pafs.FileType.File:
                    self.fs.delete_file(posixpath.join(self.root, name))
            self._sync(self.root)
        except (OSError, pa.ArrowException) as exc:
            raise OutputError(f"{self.out}: the new output is complete, but removing the old one's files failed "
                              f"({_describe(exc)})", fix="rerun with --overwrite to remove them") from None
        self._state = "done"

    def _roll_back(self) -> None:
        """Before the commit: take the new manifest back (if it was renamed) and then the new shards."""
        if self._state == "renamed":
            if self._previous is not None and not self.local:
                self._put_in_out(MANIFEST, self._previous)
            elif self._previous is not None:
                self._stage(MANIFEST, self._previous)  # a copy: the journal keeps naming both outputs' files
                self._move(MANIFEST)
            else:
                try:
                    self.fs.delete_file(posixpath.join(self.root, MANIFEST))
                except FileNotFoundError:
                    pass  # stopped just before its rename
            self._sync(self.root)
        if self._store_lock is not None and self._store_lock.lost:
            # Another run writes here now, and its shards may carry the same names (same input, same bytes): leave
            # them; the claims in the temporary folder let the next --overwrite tell them apart.
            self._moved.clear()
            self.stager.put.clear()
            self._state = "writing"
            return
        # On an object store the shards went into OUT as they were written, by this process or by Ray tasks: the
        # claims in the temporary folder name them all.
        for name in reversed(self._moved if self.local else sorted(self.stager.claimed())):
            if name not in self._old_files:  # an old name holds the same bytes as before: it is the old shard
                try:
                    self.fs.delete_file(posixpath.join(self.root, name))
                except FileNotFoundError:
                    pass  # stopped just before its rename, or an object store's put that failed before it completed
        self._moved.clear()
        self.stager.put.clear()
        self._state = "writing"

    # -------------------------------------------------------------------------------------------- after the run

    def _close(self, *, failed: bool) -> None:
        """Roll back or finish the swap, remove the temporary folder, release the lock. A Ctrl-C or SIGTERM that
        lands in here waits until it is over (``signals_deferred``): raised halfway, it left the temporary folder
        and the lock behind after a run that otherwise cleaned up (seen once in a few hundred runs of the random-kill
        test)."""
        with signals_deferred():
            self._close_now(failed=failed)

    def _close_now(self, *, failed: bool) -> None:
        self.stager.close()  # no flush still running on files about to be removed
        consistent = True
        try:
            if self._state in ("moving", "renamed") or (self._state == "writing" and not self.local):
                self._roll_back()
            elif self._state == "committed":
                self._finish()
        except (OSError, pa.ArrowException, OutputError):
            consistent = False  # the journal in the temporary folder tells the next run what is whose
        if consistent and not (self._store_lock is not None and self._store_lock.lost):
            self._remove_folder(self.tmp, quiet=True)
        self._lock.release()
        if self._store_lock is not None:
            self._store_lock.release()
        if failed and consistent and self._state != "done":
            for folder in reversed(self._created):
                try:
                    os.rmdir(folder)  # only if empty: never anything but what this run made
                except OSError:
                    break

    def _remove_folder(self, folder: str, *, quiet: bool = False) -> None:
        """Remove a temporary folder of bestfit's: its regular files one by one, then the empty folder."""
        try:
            for entry in self.fs.get_file_info(pafs.FileSelector(folder)):
                self.fs.delete_file(entry.path)
            if self.local:
                os.rmdir(folder)
            else:
                self.fs.delete_dir(folder)
        except (OSError, pa.ArrowException):
            if not quiet:
                raise


def _json_bytes(payload: dict[str, Any]) -> bytes:
    return (json.dumps(payload, indent=2, sort_keys=False) + "\n").encode()
