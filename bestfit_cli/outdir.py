"""The OUT folder: the names bestfit writes there, what it may delete, and the lock that keeps one run at a time.

A finished output is ``manifest.json``, the report it names and the shards it lists. Shard names carry the window,
the part and a digest of the shard's bytes, so two different outputs never share a name with different contents:
a new output's shards can sit beside the old ones until the new manifest replaces the old one (``write.py``).
A run keeps its staged files, and while it swaps outputs a journal (the new manifest and the replaced one), in its
own ``.bestfit-tmp-*`` folder; files that journal names are an interrupted run's, never the user's.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import signal
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from .errors import OutputError
from .formats.json_depth import loads
from .fs import storage_error

MANIFEST = "manifest.json"
STATS = "stats.json"
TMP_PREFIX = ".bestfit-tmp-"
NEXT = "next.json"  # in a run's temporary folder while it swaps: the manifest it puts in place
PREVIOUS = "previous.json"  # and the manifest it replaces
CLAIM_PREFIX = "claim-"  # on an object store, in a run's temporary folder: claim-NAME is put before OUT/NAME is
LOCK = ".bestfit-lock"
STORE_LOCK_REFRESH = 30.0  # seconds between refreshes of an object store's run marker
STORE_LOCK_STALE = 120.0  # a marker older than this is a dead run's
SHARD_PREFIX = "train-"  # the split name datasets.load_dataset recognises in a file name
WINDOW_DIGITS = PART_DIGITS = 8
DIGEST_CHARS = 16
OS_LITTER = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
_TEMP_FOLDER = re.compile(re.escape(TMP_PREFIX) + r"[0-9a-f]{12}")


def shard_name(window: int, part: int, sha256: str, suffix: str) -> str:
    """``train-WWWWWWWW-PPPPPPPP-DIGEST.suffix``: fixed-width fields, so sorted names follow the manifest."""
    for what, value, digits, fix in (("windows", window, WINDOW_DIGITS, "raise --window-tokens"),
                                     ("shards in one window", part, PART_DIGITS, "raise --rows-per-shard")):
        if value >= 10**digits:
            raise OutputError(f"the output would have more than {10**digits - 1:,} {what}", fix=fix)
    return f"{SHARD_PREFIX}{window:0{WINDOW_DIGITS}d}-{part:0{PART_DIGITS}d}-{sha256[:DIGEST_CHARS]}{suffix}"


def companion_name(shard: str, fmt: Any, suffix: str) -> str:
    """The name of a shard's companion file (a many-file format's): the shard's stem with the companion's suffix."""
    return str(shard.removesuffix(fmt.suffix) + suffix)


def is_os_litter(name: str) -> bool:
    """Files an operating system's file browser leaves in any folder it shows (never bestfit's, never data)."""
    return name in OS_LITTER or name.startswith("._")


def is_ignored(name: str) -> bool:
    """Entries of OUT that neither ``verify`` nor ``--overwrite`` look at: OS litter and the run lock."""
    return name == LOCK or is_os_litter(name)


def is_temp_folder(name: str) -> bool:
    return _TEMP_FOLDER.fullmatch(name) is not None


def _is_plain_name(value: Any) -> bool:
    return isinstance(value, str) and value not in ("", ".", "..") and "/" not in value and "\\" not in value


def _shard_files(manifest: Any) -> dict[str, Any] | None:
    """Every file a manifest's shards list (companions included), with its listed sha256; None if not bestfit's."""
    if not isinstance(manifest, dict) or manifest.get("format") != "bestfit.packed":
        return None
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        return None
    files: dict[str, Any] = {}
    for shard in shards:
        companions = shard.get("files") or [] if isinstance(shard, dict) else None
        if not isinstance(companions, list):
            return None
        entries = [shard, *companions]
        if not all(isinstance(e, dict) and _is_plain_name(e.get("path")) for e in entries):
            return None
        files.update((e["path"], e.get("sha256")) for e in entries)
    return files


def _parse(raw: bytes) -> Any:
    try:
        return loads(raw)
    except ValueError:  # not JSON, not UTF-8, or nested deeper than any manifest (json_depth.TooDeep)
        return None


def listed_sha256(raw: bytes) -> dict[str, Any]:
    """The sha256 a manifest lists for each of its shards' files."""
    return _shard_files(_parse(raw)) or {}


def manifest_files(raw: bytes) -> set[str] | None:
    """The files a bestfit manifest lists (its shards and their companions, its report and itself), or None if
    ``raw`` is not one."""
    manifest = _parse(raw)
    files = _shard_files(manifest)
    if files is None:
        return None
    report = manifest.get("stats", STATS)
    names = set(files) | {MANIFEST}
    return names | {report} if _is_plain_name(report) else names


def _read(fs: pafs.FileSystem, path: str) -> bytes | None:
    """A file's bytes, None when it cannot be read; an object store that refuses (access denied, unreachable) raises
    its ``StorageError`` instead, or an OUT it may not read would look like one without a manifest."""
    try:
        with fs.open_input_stream(path) as stream:
            data: bytes = stream.read()
            return data
    except (OSError, pa.ArrowException) as exc:
        failure = None if isinstance(fs, pafs.LocalFileSystem) else storage_error(None, exc)
        if failure is not None:
            raise failure from None
        return None


def _is_regular(fs: pafs.FileSystem, info: pafs.FileInfo) -> bool:
    """A regular file, not a folder, link or device: the only kind of entry bestfit ever deletes."""
    if isinstance(fs, pafs.LocalFileSystem):
        try:
            return stat.S_ISREG(os.lstat(info.path).st_mode)
        except OSError:
            return False
    return bool(info.type == pafs.FileType.File)


def _listing(fs: pafs.FileSystem, folder: str) -> dict[str, pafs.FileInfo]:
    return {posixpath.basename(e.path): e for e in fs.get_file_info(pafs.FileSelector(folder))}


@dataclass
class Contents:
    """What OUT holds, sorted by who wrote it."""

    manifest: bytes | None = None  # the finished output's manifest, as read
    owned: set[str] = field(default_factory=set)  # files that manifest lists, present in OUT
    leftovers: set[str] = field(default_factory=set)  # files an interrupted run's journal names, no manifest lists
    temp_folders: list[str] = field(default_factory=list)  # bestfit's temporary folders: regular files only
    foreign: list[str] = field(default_factory=list)  # everything else, but OS litter and the lock

    @property
    def empty(self) -> bool:
        return not (self.manifest or self.owned or self.leftovers or self.temp_folders or self.foreign)


def leftover_files(fs: pafs.FileSystem, root: str) -> set[str]:
    """Files of OUT that an interrupted run's journal names: the shards it was moving in or replacing, and on an
    object store the shards it claimed (``CLAIM_PREFIX``) before writing them into OUT."""
    names: set[str] = set()
    for name, info in _listing(fs, root).items():
        if is_temp_folder(name) and info.type == pafs.FileType.Directory:
            if not isinstance(fs, pafs.LocalFileSystem):  # shards are written straight into OUT, each claimed first
                names |= {claim.removeprefix(CLAIM_PREFIX) for claim in _listing(fs, info.path)
                          if claim.startswith(CLAIM_PREFIX)}
            for journal in (NEXT, PREVIOUS):
                raw = _read(fs, posixpath.join(root, name, journal))
                names |= (manifest_files(raw) or set()) if raw is not None else set()
    return names - {MANIFEST}


def pending_report(fs: pafs.FileSystem, root: str, stats_sha256: str) -> str | None:
    """The temporary folder holding the report ``stats_sha256`` names, when a run was stopped after its manifest
    replaced the old one but before its ``stats.json`` followed (the one step of the swap after the commit that
    OUT's files depend on). None when there is no such folder."""
    import hashlib

    for name, info in sorted(_listing(fs, root).items()):
        if not (is_temp_folder(name) and info.type == pafs.FileType.Directory):
            continue
        if _read(fs, posixpath.join(root, name, NEXT)) is None:
            continue  # no journal: not a swap in progress
        report = _read(fs, posixpath.join(root, name, STATS))
        if report is not None and hashlib.sha256(report).hexdigest() == stats_sha256:
            return name
    return None


def survey(fs: pafs.FileSystem, root: str) -> Contents:
    """Sort OUT's entries: the finished output, an interrupted run's files, bestfit's temp folders, and the rest."""
    found = Contents()
    entries = _listing(fs, root)
    listed: set[str] = set()
    if MANIFEST in entries:
        raw = _read(fs, posixpath.join(root, MANIFEST))
        names = manifest_files(raw) if raw is not None else None
        if names is not None:  # otherwise not a bestfit manifest: the user's file
            found.manifest, listed = raw, names
    journal = leftover_files(fs, root)
    for name, info in sorted(entries.items()):
        if is_ignored(name):
            continue
        if is_temp_folder(name) and info.type == pafs.FileType.Directory:
            inside = _listing(fs, info.path).values()
            if all(_is_regular(fs, entry) for entry in inside):
                found.temp_folders.append(name)
                continue
        elif name in listed and _is_regular(fs, info):
            found.owned.add(name)
            continue
        elif name in journal and _is_regular(fs, info):
            found.leftovers.add(name)
            continue
        found.foreign.append(name)
    return found


def refuse_foreign(out: str, contents: Contents) -> None:
    if contents.foreign:
        shown = ", ".join(contents.foreign[:3]) + (", ..." if len(contents.foreign) > 3 else "")
        raise OutputError(f"{out}: OUT holds files bestfit did not write ({shown}); --overwrite deletes only what "
                          f"OUT/{MANIFEST} lists", fix="choose another OUT, or move those files away")


class StoreLock:
    """The guard an object store allows instead of ``flock``: a marker object ``OUT/.bestfit-lock`` naming the run,
    put at the start and refreshed every ``STORE_LOCK_REFRESH`` seconds by a thread while the run lives.

    A second run that finds a marker refreshed less than ``stale_seconds`` ago (``BESTFIT_S3_LOCK_STALE``, default
    ``STORE_LOCK_STALE``) refuses OUT as busy; an older one is a dead run's and is taken over. Before its commit a
    run reads the marker again, and one that finds another run's there stops without committing (``lost``). It is
    not a lock: pyarrow has no conditional put, so two runs started within the same moment can both begin; the
    check before the commit then stops the one whose marker was overwritten (docs/guarantees.md).
    """

    def __init__(self, out: str, fs: pafs.FileSystem, folder: str) -> None:
        import uuid

        self.out, self.fs = out, fs
        self.path = posixpath.join(folder, LOCK)
        self.run = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.held = False
        self.lost = False
        self._stop: Any = None
        self._thread: Any = None

    def _marker(self) -> tuple[dict[str, Any] | None, float | None]:
        """The marker in OUT and how many seconds ago the store says it was written; (None, None) if none."""
        import time

        info = self.fs.get_file_info(self.path)
        if info.type != pafs.FileType.File:
            return None, None
        raw = _read(self.fs, self.path)
        marker = _parse(raw) if raw is not None else None
        age = time.time() - info.mtime.timestamp() if info.mtime is not None else None
        return (marker if isinstance(marker, dict) else {}), age

    def _put(self) -> None:
        import time

        with self.fs.open_output_stream(self.path) as stream:
            stream.write(json.dumps({"run": self.run, "refreshed": time.time()}).encode())

    def acquire(self) -> None:
        import threading

        marker, age = self._marker()
        stale = float(os.environ.get("BESTFIT_S3_LOCK_STALE", STORE_LOCK_STALE))
        if marker is not None and (age is None or age < stale):
            who = marker.get("run", "unknown") if marker else "unknown"
            raise OutputError(f"{self.out}: another bestfit run is writing to OUT ({LOCK} of run {who} was refreshed "
                              f"{max(age or 0, 0):.0f}s ago)",
                              fix=f"wait for that run to finish, or choose another OUT; a marker not refreshed for "
                                  f"{stale:.0f}s is a dead run's and is taken over")
        self._put()
        self.held = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh, name="bestfit-lock", daemon=True)
        self._thread.start()

    def _refresh(self) -> None:
        while not self._stop.wait(STORE_LOCK_REFRESH):
            try:
                if self.still_ours():
                    self._put()
            except (OSError, pa.ArrowException):
                pass  # the check before the commit decides

    def still_ours(self) -> bool:
        marker, _ = self._marker()
        ours = marker is not None and marker.get("run") == self.run
        self.lost = self.lost or not ours
        return ours

    def release(self) -> None:
        """Stop the refresher (joined: no request of it may outlive the run) and remove the marker if ours."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        if self.held:
            self.held = False
            try:
                if self.still_ours():
                    self.fs.delete_file(self.path)
            except (OSError, pa.ArrowException):
                pass


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block is over: their handlers (which raise, so every writer unwinds) run
    when it ends, on state the block left whole (a lock file made and known to be ours), never in its middle.
    Only the main thread runs signal handlers, so elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    watched = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, lambda signum, _frame: received.append(signum)) for signum in watched}
    try:
        yield
    finally:
        for watched_signal, handler in previous.items():
            signal.signal(watched_signal, handler)
        for arrived in dict.fromkeys(received):
            handler = previous[signal.Signals(arrived)]
            if callable(handler):
                handler(arrived, None)  # raises (KeyboardInterrupt, cli.Terminated): the caller cleans up
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), arrived)


class OutLock:
    """An exclusive ``flock`` on ``OUT/.bestfit-lock`` for the whole run; the kernel drops it when a run dies.

    The file is removed on release. A run that opened it just before it was removed would hold a lock on a file no
    longer in OUT, so after locking it checks that the path still names the file it locked, and retries if not.
    """

    def __init__(self, out: str, folder: str) -> None:
        self.out = out
        self.path = os.path.join(folder, LOCK)
        self.fd: int | None = None
        self.locked = False

    def acquire(self) -> None:
        """Raises ``OutputError`` when another run holds OUT; a signal during it comes once ``release()`` knows
        whether the file is this run's to remove."""
        with signals_deferred():
            self._acquire()

    def _acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return
        for _ in range(100):
            self.fd = fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.release()
                raise OutputError(f"{self.out}: another bestfit run is writing to OUT (it holds {LOCK})",
                                  fix="wait for that run to finish, or choose another OUT") from None
            self.locked = True  # from here on, release() removes the file, however acquire() is left
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return
            self.locked = False  # another run removed that file: it is not OUT's lock any more
            self.release()
        raise OutputError(f"{self.out}: cannot lock OUT", fix="retry, or choose another OUT")

    def release(self) -> None:
        if self.fd is None:
            return
        if self.locked:
            try:
                os.unlink(self.path)
            except OSError:
                pass
        os.close(self.fd)
        self.fd, self.locked = None, False
