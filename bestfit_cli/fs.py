"""The one filesystem layer: every input and output path goes through pyarrow's filesystems.

Local paths, ``file://`` and object-store URIs (``s3://``, ``gs://``) resolve to a ``pyarrow.fs.FileSystem``
plus a path on it, so readers and writers never touch ``open()`` or ``os`` directly.
"""

from __future__ import annotations

import functools
import os
import posixpath
import re
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.fs as pafs

from .errors import InputError, OptionError, OutputError, StorageError

if TYPE_CHECKING:
    from .formats.base import DatasetFolder, InputFormat

Format = str  # the name of a registered input format (``formats.INPUT_FORMATS``)
STDIN = "-"

_COMPRESSED_SUFFIXES = (".gz", ".bz2", ".zst", ".lz4")
_BIN, _IDX, _NPY = ".bin", ".idx", ".npy"


@dataclass(frozen=True)
class InputFile:
    """One input file: ``name`` is what messages show; ``fs`` and ``fs_path`` are how to read it; ``given`` is the
    input argument that named it (the file itself, or the folder or glob it was found by)."""

    name: str
    format: Format
    fs: pafs.FileSystem | None = None
    fs_path: str = ""
    size: int | None = None
    mtime_ns: int | None = None
    given: str = ""

    @property
    def resolved(self) -> str:
        """Where the bytes were read: a local file's absolute path with links followed, else the full URI."""
        if self.is_stdin:
            return STDIN
        if self.is_local:
            return os.path.realpath(self.fs_path)
        return self.name

    @property
    def is_stdin(self) -> bool:
        return self.name == STDIN

    @property
    def is_local(self) -> bool:
        """Whether the file is on this machine's disk (not an object store)."""
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def format_compressed(self) -> bool:
        return self.name.lower().endswith(_COMPRESSED_SUFFIXES)


def _is_uri(path: str) -> bool:
    return "://" in path


def filesystem_for(path: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and in-filesystem path for a local path or a URI."""
    if _is_uri(path):
        try:
            fs, fs_path = pafs.FileSystem.from_uri(_with_configured_endpoint(path))
            return fs, str(fs_path)
        except Exception as exc:  # pyarrow raises several types for unsupported schemes
            failure = storage_error(path, exc)
            if failure is not None:
                raise failure from None
            # Only the first line: HDFS appends one line for every libjvm path it tried (about a hundred).
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            fix = ("HDFS needs Java and libhdfs: set JAVA_HOME and HADOOP_HOME, or copy the data to a local disk"
                   if "libjvm" in detail or "libhdfs" in detail else
                   "use a local path or a URI pyarrow supports, such as s3://bucket/prefix")
            raise InputError(path, f"cannot open this location: {detail}", fix=fix) from None
    return pafs.LocalFileSystem(), os.path.abspath(path)


# ------------------------------------------------------------------------------------------------ object stores


def _aws_config_value(key: str) -> str | None:
    """``key`` of the active profile in the AWS config file (``AWS_CONFIG_FILE``, else ``~/.aws/config``), at the
    profile's top level or in its ``s3 =`` block; None when absent or unreadable."""
    import configparser

    path = os.environ.get("AWS_CONFIG_FILE") or os.path.join(os.path.expanduser("~"), ".aws", "config")
    profile = os.environ.get("AWS_PROFILE") or os.environ.get("AWS_DEFAULT_PROFILE") or "default"
    parser = configparser.RawConfigParser()
    try:
        parser.read(path)
    except (OSError, configparser.Error):
        return None
    for name in ((profile,) if profile == "default" else (f"profile {profile}", profile)):
        if parser.has_section(name):
            section = parser[name]
            nested = dict(line.split("=", 1) for line in section.get("s3", "").splitlines() if "=" in line)
            value = {k.strip(): v.strip() for k, v in nested.items()}.get(key) or section.get(key)
            return value.strip() if value else None
    return None


def s3_endpoint() -> str | None:
    """The endpoint an ``s3://`` path goes to when it is not AWS: ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL`` (both
    read by pyarrow itself), or the profile's ``endpoint_url`` in the AWS config file (which pyarrow ignores)."""
    for variable in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        if os.environ.get(variable):
            return os.environ[variable]
    if os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() == "true":
        return None
    return _aws_config_value("endpoint_url")


def _with_configured_endpoint(uri: str) -> str:
    """``uri`` with the config file's endpoint as a query, for the one source of it pyarrow does not read."""
    if not uri.startswith("s3://") or "?" in uri or any(os.environ.get(v) for v in (
            "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")):
        return uri
    endpoint = s3_endpoint()
    if not endpoint:
        return uri
    from urllib.parse import quote, urlsplit

    parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    return f"{uri}?endpoint_override={quote(parts.netloc, safe='')}&scheme={parts.scheme or 'https'}"


def _has_credentials() -> bool:
    """Whether the AWS SDK's chain can find credentials without asking an instance metadata service: keys in the
    environment, a profile, a web identity or container role, or a credentials or config file."""
    if any(os.environ.get(v) for v in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
                                        "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                                        "AWS_CONTAINER_CREDENTIALS_FULL_URI")):
        return True
    home = os.path.expanduser("~")
    credentials = os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.join(home, ".aws", "credentials")
    return os.path.isfile(credentials) or _aws_config_value("aws_access_key_id") is not None


_AWS_CODE = re.compile(r"AWS Error (\w+)")
_BUCKET = re.compile(r"[Bb]ucket '([^']+)'")
_KEY = re.compile(r"key '([^']*)'")
_CREDENTIALS_FIX = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with ~/.aws/credentials "
                    "(docs/usage.md#object-storage)")


def storage_error(path: str | None, exc: BaseException) -> StorageError | None:
    """An object store's failure (no such bucket, access denied, no or bad credentials, endpoint unreachable) as a
    one-line error naming ``path`` and the fix; None when ``exc`` is not one (a local error, bad data).

    With ``path`` None (an error no caller wrapped), the path is taken from pyarrow's message."""
    text = str(exc)
    code = (_AWS_CODE.search(text) or [None, ""])[1]
    if path is None:
        bucket, key = _BUCKET.search(text), _KEY.search(text)
        if bucket is None:
            return None
        path = f"s3://{bucket[1]}" + (f"/{key[1]}" if key else "")
    endpoint = s3_endpoint() or "AWS S3"
    if code == "NO_SUCH_BUCKET" or "NoSuchBucket" in text or re.search(r"Bucket '[^']+' not found", text):
        bucket = _BUCKET.search(text)
        name = f"s3://{bucket[1]}" if bucket else "the bucket"
        return StorageError(f"{path}: {name} does not exist (at {endpoint})",
                            fix="create the bucket first (bestfit never creates one), or check its name and "
                                "AWS_ENDPOINT_URL")
    if code in ("INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH") or any(
            word in text for word in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                                      "InvalidToken")):
        return StorageError(f"{path}: the object store at {endpoint} rejected the AWS credentials",
                            fix="check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) or the "
                                "profile's keys in ~/.aws/credentials")
    if code == "ACCESS_DENIED" or "AccessDenied" in text or "HTTP status 403" in text:
        if not _has_credentials():
            return StorageError(f"{path}: access denied, and no AWS credentials were found", fix=_CREDENTIALS_FIX)
        return StorageError(f"{path}: access denied for these AWS credentials",
                            fix="check that AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) name valid "
                                "keys whose policy grants s3:ListBucket and s3:GetObject on the bucket, and "
                                "s3:PutObject and s3:DeleteObject to write OUT")
    if code == "NETWORK_CONNECTION" or "curlCode" in text:
        return StorageError(f"{path}: cannot reach the object store at {endpoint}",
                            fix="check AWS_ENDPOINT_URL (for MinIO and other S3-compatible stores) and the network")
    return None


def check_bucket(arg: str, fs: pafs.FileSystem, path: str) -> None:
    """On an object store, a path that is not found because its bucket is not: say so (a listing of a missing
    bucket looks like an empty folder)."""
    if isinstance(fs, pafs.LocalFileSystem) or fs.type_name != "s3" or not path.strip("/"):
        return
    bucket = path.strip("/").split("/", 1)[0]
    try:
        found = fs.get_file_info(bucket).type != pafs.FileType.NotFound
    except (OSError, pa.ArrowException) as exc:
        raise storage_error(arg, exc) or InputError(arg, f"cannot be read ({exc})",
                                                    fix="check the path and its permissions") from None
    if not found:
        raise storage_error(arg, OSError(f"Bucket '{bucket}' not found")) or AssertionError(bucket)


def input_formats() -> dict[str, InputFormat]:
    """The registry of input formats, in the order they are asked (``formats.INPUT_FORMATS``)."""
    from .formats import INPUT_FORMATS  # the formats import this module: looked up when first needed

    return INPUT_FORMATS


def format_of(path: str, exists: Callable[[str], bool] | None = None) -> Format | None:
    """The input format that reads the file at ``path``, by its name (a compression suffix such as ``.gz`` looked
    through), or None when no registered format reads it. ``exists(other_path)`` says whether a file beside it
    exists, for formats of file pairs; without it, none is assumed."""
    name = path
    for suffix in _COMPRESSED_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    beside = exists if exists is not None else (lambda _other: False)
    return next((fmt.name for fmt in input_formats().values() if fmt.recognizes(name, beside)), None)


def _display(arg: str, fs_path: str) -> str:
    if _is_uri(arg):
        scheme = arg.split("://", 1)[0]
        return f"{scheme}://{fs_path}"
    return os.path.relpath(fs_path) if not os.path.isabs(arg) else fs_path


def _file_info(arg: str, fs: pafs.FileSystem, target: str | pafs.FileSelector) -> Any:
    """``fs.get_file_info`` with filesystem errors (permissions, name too long, I/O) as one-line input errors."""
    try:
        return fs.get_file_info(target)
    except (OSError, pa.ArrowException) as exc:
        failure = storage_error(arg, exc)
        if failure is not None:
            raise failure from None
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(arg, f"cannot be read ({detail})", fix="check the path and its permissions") from None


# ------------------------------------------------------------------------------------------------ what is left out


@dataclass(frozen=True)
class LeftOut:
    """An entry a folder scan or glob found but does not read, or an input already read: ``why`` is one of
    ``LEFT_OUT_REASONS``; ``same_as`` names the input it repeats (``read already``) or the folder a link leads back
    to (``link loop``)."""

    path: str
    why: str
    same_as: str = ""

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.why, **({"same_as": self.same_as} if self.same_as else {})}

    @property
    def notable(self) -> bool:
        """Whether it could hold documents, so the one-line note names it: a folder, a file reached twice, or a
        name with an input suffix in it (``_part.parquet``, ``a.jsonl.xz``); a ``README.md`` or ``_SUCCESS`` is
        only listed in the manifest."""
        name = self.path.lower().rstrip("/").rsplit("/", 1)[-1]
        return self.why in (READ_ALREADY, LINK_LOOP) or self.path.endswith("/") or any(
            suffix in name for fmt in input_formats().values() for suffix in fmt.suffixes)

    @classmethod
    def from_json(cls, data: dict[str, str]) -> LeftOut:
        return cls(data["path"], data["reason"], data.get("same_as", ""))

    def __str__(self) -> str:
        if self.same_as == self.path:
            return f"{self.path} (given twice)"
        return f"{self.path} = {self.same_as}" if self.same_as else self.path


HIDDEN, NOT_INPUT, READ_ALREADY, LINK_LOOP = "hidden", "no input format by its name", "read already", "link loop"
NOT_IN_DATASET = "in a dataset folder, not one of its data files"
# Formats add their own reasons (``InputFormat.not_data``, such as "one JSON document, not JSON Lines").
NO_BIN = "a Megatron .idx without its .bin"
LEFT_OUT_REASONS = (HIDDEN, NOT_INPUT, NO_BIN, NOT_IN_DATASET, READ_ALREADY, LINK_LOOP)
_NOTE_EXAMPLES = 3


def left_out_note(left_out: Sequence[LeftOut]) -> str | None:
    """One line naming what a scan left out that could hold documents (``LeftOut.notable``; the first few of each
    kind), or None when there is none."""
    left_out = [e for e in left_out if e.notable]
    if not left_out:
        return None
    parts = []
    for why in dict.fromkeys([*LEFT_OUT_REASONS, *(e.why for e in left_out)]):
        entries = [e for e in left_out if e.why == why]
        if entries:
            shown = ", ".join(str(e) for e in entries[:_NOTE_EXAMPLES])
            more = f", +{len(entries) - _NOTE_EXAMPLES:,} more" if len(entries) > _NOTE_EXAMPLES else ""
            parts.append(f"{len(entries):,} {why} ({shown}{more})")
    return f"inputs left out: {'; '.join(parts)} (rules: docs/usage.md#inputs-and-document-numbering)"


@dataclass(frozen=True)
class InputScan:
    """What the input arguments resolve to: the files to read, in document-numbering order, and what was left out."""

    files: tuple[InputFile, ...]
    left_out: tuple[LeftOut, ...] = ()

    def note(self) -> str | None:
        """One line naming what was left out (the first few of each kind), or None when nothing was."""
        return left_out_note(self.left_out)

    def left_out_json(self) -> list[dict[str, str]]:
        return [e.to_json() for e in self.left_out]


# ------------------------------------------------------------------------------------------------ globs


_WILDCARDS = "*?["


def _has_wildcard(text: str) -> bool:
    return any(ch in text for ch in _WILDCARDS)


@functools.lru_cache(maxsize=256)
def _component_regex(part: str, hidden_ok: bool) -> re.Pattern[str]:
    """One path component of a glob: ``*`` any characters, ``?`` one, ``[...]`` (``[!...]``) one of (not of) a set.
    Unless ``hidden_ok``, a component that does not start with a literal character never matches a name starting
    with ``.`` or ``_``, as a shell's ``*`` never matches a dot file."""
    out = [] if hidden_ok or part[:1] not in _WILDCARDS else ["(?![._])"]
    i = 0
    while i < len(part):
        ch = part[i]
        close = _bracket_end(part, i) if ch == "[" else -1
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif close > 0:
            body = part[i + 1:close]
            negate = body[:1] in ("!", "^")
            body = re.escape(body[1:] if negate else body).replace("\\-", "-")
            out.append(f"[{'^' if negate else ''}{body}]")
            i = close
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def _bracket_end(part: str, start: int) -> int:
    """Where the set opened at ``part[start]`` closes, or -1 when it does not (a lone ``[`` is literal)."""
    j = start + 1
    if part[j:j + 1] in ("!", "^"):
        j += 1
    if part[j:j + 1] == "]":
        j += 1
    return part.find("]", j)


def _matches(parts: Sequence[str], pattern: Sequence[str], hidden_ok: bool, folder: bool = False) -> bool:
    """Whether the path ``parts`` matches the glob components ``pattern`` (``**`` is any number of folders); with
    ``folder``, whether something below the folder ``parts`` could match."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        if _matches(parts, pattern[1:], hidden_ok, folder):
            return True
        return bool(parts) and (hidden_ok or not _hidden(parts[0])) and _matches(parts[1:], pattern, hidden_ok,
                                                                                  folder)
    if not parts:
        return folder
    return bool(_component_regex(pattern[0], hidden_ok).fullmatch(parts[0])) and _matches(
        parts[1:], pattern[1:], hidden_ok, folder)


@dataclass(frozen=True)
class _Pattern:
    """What a folder scan or a glob takes below its literal folder. A glob that matches a folder takes the folder
    as a scan would (``data/*`` reads ``data/sub/``), so every pattern ends in an implied ``**``."""

    parts: tuple[str, ...]
    whole_folder: bool  # a folder scan: every file below, so a folder reached twice is read once

    @classmethod
    def of(cls, parts: Sequence[str], whole_folder: bool = False) -> _Pattern:
        return cls((*parts, "**"), whole_folder)

    def takes(self, rel: str, hidden_ok: bool = False) -> bool:
        return _matches(rel.split("/"), self.parts, hidden_ok)

    def enters(self, rel: str, hidden_ok: bool = False) -> bool:
        return _matches(rel.split("/"), self.parts, hidden_ok, folder=True)


FOLDER_SCAN = _Pattern.of([], whole_folder=True)


# ------------------------------------------------------------------------------------------------ listing


@dataclass(frozen=True)
class _Entry:
    """A file a listing found: its path on ``fs``, its path below the listed folder, and what identifies it."""

    fs_path: str
    rel: str
    size: int | None
    mtime_ns: int | None
    identity: tuple[Any, ...]
    fmt: str = ""  # the input format that reads it, once the scan takes it
    order: tuple[str, int] | None = None  # a dataset folder's file: (the folder + "/", its place in the dataset)

    @property
    def sort_key(self) -> tuple[str, int]:
        """Files sort by path; a dataset folder's files, at the folder's place, in the dataset's own order."""
        return self.order if self.order is not None else (self.fs_path, 0)


def _hidden(name: str) -> bool:
    return name.startswith((".", "_"))


class _Lister:
    """Walks one folder for a folder scan or a glob, collecting the files taken and the entries left out."""

    def __init__(self, arg: str, fs: pafs.FileSystem, root: str, pattern: _Pattern) -> None:
        self.arg, self.fs, self.root, self.pattern = arg, fs, root, pattern
        self.files: list[_Entry] = []
        self.indexes: list[_Entry] = []  # Megatron .idx files found: companions of the .bin beside them
        self.left_out: list[LeftOut] = []
        self.listed: set[str] = set()  # an object store's files (a local disk is asked instead)

    def _claims(self, rel: str) -> bool:
        """Whether a folder may be taken as one dataset: a folder scan's root, or a folder the pattern takes whole
        (``data/*`` takes ``data/ds/``); never a glob's literal folder (``ds/*.arrow`` names files of it)."""
        return self.pattern.whole_folder if not rel else self.pattern.takes(rel)

    def display(self, fs_path: str) -> str:
        return _display(self.arg, fs_path)

    def consider(self, rel: str, entry: _Entry | None) -> bool:
        """Whether a file is taken (``entry``) or a folder entered (None); a name the hidden rule alone refuses is
        noted, as is a file taken whose name is no input format."""
        path = posixpath.join(self.root, rel)
        taken = self.pattern.takes(rel) if entry is not None else self.pattern.enters(rel)
        if taken and entry is not None and rel.lower().endswith(_IDX):
            self.indexes.append(entry)  # read with its .bin; one without is noted once the folder is listed
            return False
        if taken and entry is not None:
            fmt = format_of(path, self.exists)
            reason = input_formats()[fmt].not_data(self.fs, path) if fmt is not None else NOT_INPUT
            if reason is not None:
                self.left_out.append(LeftOut(self.display(path), reason))
                return False
        if not taken and (self.pattern.takes(rel, hidden_ok=True) if entry is not None
                          else self.pattern.enters(rel, hidden_ok=True) and _hidden(posixpath.basename(rel))):
            self.left_out.append(LeftOut(self.display(path) + ("/" if entry is None else ""), HIDDEN))
        return taken

    def exists(self, fs_path: str) -> bool:
        """Whether a file is at ``fs_path`` (for formats of file pairs: a Megatron ``.bin`` beside its ``.idx``)."""
        if isinstance(self.fs, pafs.LocalFileSystem):
            return os.path.isfile(fs_path)
        return fs_path in self.listed

    def claim(self, folder: str, names: Sequence[str], entry_of: Callable[[str], _Entry | None]) -> bool:
        """Whether ``folder`` is one dataset (a ``save_to_disk`` folder) of a registered format, whose data files then
        join the scan in the dataset's own order; a bestfit output folder is refused."""
        shown = self.display(folder)
        refuse_bestfit_output(self.fs, folder, names, shown)
        dataset, fmt = _dataset_of(self.fs, folder, names, shown)
        if dataset is None:
            return False
        start = folder.rstrip("/") + "/"  # sorts before every path inside the folder
        for place, name in enumerate(dataset.files):
            path = start + name
            entry = entry_of(path)
            if entry is None:
                raise InputError(self.display(path), "cannot be read (a broken link, or not a regular file?)",
                                 fix="restore the file, or save the dataset again")
            self.files.append(replace(entry, fmt=fmt, order=(start, place)))
        belongs = set(dataset.files) | set(dataset.metadata)
        for name in names:
            if name not in belongs:
                self.left_out.append(LeftOut(self.display(start + name), NOT_IN_DATASET))
        return True

    def walk_local(self) -> None:
        """Follows links to folders, but never a link back into a folder being walked (a loop), and, in a folder
        scan, never a folder twice (two links to one folder)."""
        seen_folders: dict[tuple[int, int], str] = {}
        stack: list[tuple[str, tuple[tuple[int, int], ...]]] = [("", ())]
        # Depth first, in sorted order; each stack entry carries the identities of the folders above it.
        while stack:
            rel, ancestors = stack.pop()
            folder = posixpath.join(self.root, rel) if rel else self.root
            try:
                st = os.stat(folder)
                names = sorted(os.listdir(folder))
            except OSError as exc:
                raise InputError(self.display(folder), f"cannot be read ({exc.strerror or exc})",
                                 fix="check the path and its permissions") from None
            key = (st.st_dev, st.st_ino)
            if key in ancestors:
                self.left_out.append(LeftOut(self.display(folder) + "/", LINK_LOOP,
                                             self.display(seen_folders.get(key, folder))))
                continue
            if self.pattern.whole_folder and key in seen_folders:
                self.left_out.append(LeftOut(self.display(folder) + "/", READ_ALREADY, seen_folders[key] + "/"))
                continue
            seen_folders.setdefault(key, self.display(folder))
            if self._claims(rel) and self.claim(folder, names, _local_entry(self.root)):
                continue
            below = []
            for name in names:
                child_rel = f"{rel}/{name}" if rel else name
                path = posixpath.join(folder, name)
                try:
                    child = os.stat(path)
                except OSError:
                    if format_of(name) and self.pattern.takes(child_rel):
                        # A dangling link or a file that vanished: leaving it out would lose its documents.
                        raise InputError(self.display(path), "cannot be read (a broken link?)",
                                         fix="restore the file, or remove it from the folder") from None
                    continue
                if stat.S_ISDIR(child.st_mode):
                    if self.consider(child_rel, None):
                        below.append((child_rel, (*ancestors, key)))
                    continue
                entry = _Entry(path, child_rel, child.st_size, child.st_mtime_ns, ("local", child.st_dev, child.st_ino))
                if self.consider(child_rel, entry):
                    if not stat.S_ISREG(child.st_mode):
                        raise InputError(self.display(path), "is not a regular file (a pipe or a device?)",
                                         fix="copy its contents to a file, or remove it from the folder")
                    self.files.append(entry)
            stack.extend(reversed(below))

    def walk_store(self) -> None:
        """An object store has no links: one recursive listing, filtered by the same rules."""
        infos = sorted(_file_info(self.arg, self.fs, pafs.FileSelector(self.root, recursive=True)),
                       key=lambda i: i.path)
        self.listed = {info.path for info in infos if info.type == pafs.FileType.File}
        children: dict[str, list[str]] = {}
        for info in infos:
            children.setdefault(posixpath.dirname(info.path), []).append(posixpath.basename(info.path))
        by_path = {info.path: info for info in infos}

        def entry_of(path: str) -> _Entry | None:
            info = by_path.get(path)
            if info is None or info.type != pafs.FileType.File:
                return None
            return _Entry(info.path, posixpath.relpath(info.path, self.root), info.size, info.mtime_ns,
                          (self.fs.type_name, info.path))

        if self._claims("") and self.claim(self.root, children.get(self.root.rstrip("/"), []), entry_of):
            return
        pruned: list[str] = []
        for info in infos:
            rel = posixpath.relpath(info.path, self.root)
            if any(rel.startswith(p + "/") for p in pruned):
                continue
            is_dir = info.type == pafs.FileType.Directory
            entry = None if is_dir else entry_of(info.path)
            if not self.consider(rel, entry):
                if is_dir:
                    pruned.append(rel)
                continue
            if is_dir and self._claims(rel) and self.claim(info.path, children.get(info.path, []), entry_of):
                pruned.append(rel)
            elif entry is not None:
                self.files.append(entry)


def _list(arg: str, fs: pafs.FileSystem, root: str, pattern: _Pattern) -> _Lister:
    lister = _Lister(arg, fs, root, pattern)
    if isinstance(fs, pafs.LocalFileSystem):
        lister.walk_local()
    else:
        lister.walk_store()
    lister.files.sort(key=lambda e: e.sort_key)
    _drop_companions(lister)
    bins = {e.fs_path[: -len(_BIN)] for e in lister.files if e.fs_path.lower().endswith(_BIN)}
    lister.left_out.extend(LeftOut(lister.display(e.fs_path), NO_BIN) for e in lister.indexes
                           if e.fs_path[: -len(_IDX)] not in bins)
    return lister


def _drop_companions(lister: _Lister) -> None:
    """Files read with a file taken (a Megatron ``.idx`` beside its ``.bin``) are not inputs left out."""
    formats = input_formats()
    companions = {lister.display(path) for e in lister.files
                  for path in formats[e.fmt or format_of(e.fs_path, lister.exists) or "jsonl"].companions(e.fs_path)}
    if companions:
        lister.left_out = [e for e in lister.left_out if not (e.why == NOT_INPUT and e.path in companions)]


def _local_entry(root: str) -> Callable[[str], _Entry | None]:
    def entry_of(path: str) -> _Entry | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return _Entry(path, posixpath.relpath(path, root), st.st_size, st.st_mtime_ns, ("local", st.st_dev, st.st_ino))
    return entry_of


def _dataset_of(fs: pafs.FileSystem, folder: str, names: Sequence[str], shown: str
                ) -> tuple[DatasetFolder | None, str]:
    """The dataset a folder is, and the format it is one of (the first registered format to claim it)."""
    from .formats.base import Folder

    view = Folder(fs, folder, tuple(sorted(names)), shown)
    for fmt in input_formats().values():
        dataset = fmt.dataset_folder(view)
        if dataset is not None:
            return dataset, fmt.name
    return None, ""


_BESTFIT_MANIFEST = re.compile(rb'^\s*\{\s*"format"\s*:\s*"bestfit\.packed"')


def refuse_bestfit_output(fs: pafs.FileSystem, folder: str, names: Sequence[str], shown: str) -> None:
    """Refuse a folder ``bestfit pack`` wrote (its ``manifest.json``): its rows are packed sequences, padding and
    all, not documents, and reading it beside its inputs would count every token twice."""
    if "manifest.json" not in names:
        return
    try:
        with fs.open_input_stream(folder.rstrip("/") + "/manifest.json") as stream:
            head = bytes(stream.read(256))
    except (OSError, pa.ArrowException):
        return
    if _BESTFIT_MANIFEST.match(head):
        raise InputError(shown, "is the output of bestfit pack (it holds its manifest.json), not an input",
                         fix="pack from the inputs its manifest.json lists; to read its packed rows as documents, "
                             "name its shards (OUT/train-*.parquet)")


def _split_glob(arg: str) -> tuple[str, list[str]]:
    """A glob's literal folder (as an argument: a path or URI) and its components from the first wildcard on."""
    scheme, sep, path = arg.rpartition("://") if _is_uri(arg) else ("", "", arg)
    parts = path.split("/")
    first = next(i for i, part in enumerate(parts) if _has_wildcard(part))
    base = "/".join(parts[:first]) or ("/" if path.startswith("/") else ".")
    return f"{scheme}{sep}{base}", [p for p in parts[first:] if p]


# ------------------------------------------------------------------------------------------------ resolving


InputArgs = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


def input_args(args: InputArgs) -> list[str]:
    """Input arguments as a list of strings: one path given from Python is one input, not one per character."""
    if isinstance(args, (str, os.PathLike)):
        return [os.fspath(args)]
    return [os.fspath(arg) for arg in args]


def scan_inputs(args: InputArgs) -> InputScan:
    """Expand input arguments into files, in the documented order (docs/usage.md#inputs-and-document-numbering).

    Arguments keep their order; a folder contributes its files in sorted path order (searched recursively); a
    glob its matches, sorted; ``-`` is JSONL on stdin. An existing path is always taken literally, even when it
    holds ``*``, ``?`` or ``[``. Folder scans and globs follow one rule: no wildcard matches a name starting with
    ``.`` or ``_`` (spell it out to read it), only names an input format reads are taken, and a file a format
    recognizes but finds no data in (``InputFormat.not_data``) is left out; a dataset folder (``save_to_disk``) is
    taken whole, in its own order, and a bestfit output folder is refused. What is left out is listed. A file
    reached twice (named twice, inside a folder also given, through two links) is read once, at its first place in
    the numbering; a link back into a folder being walked is never followed.
    """
    args = input_args(args)
    if not args:
        raise InputError("IN", "no input given", fix="pass one or more files, folders or globs, or - for stdin")
    if list(args).count(STDIN) > 1:
        raise OptionError("- (stdin) is given more than once", fix="read stdin once; pass files by name")
    files: list[InputFile] = []
    left_out: list[LeftOut] = []
    first_seen: dict[tuple[Any, ...], str] = {}
    for arg in args:
        if arg == STDIN:
            files.append(InputFile(STDIN, "jsonl", given=STDIN))
            continue
        found, skipped = _resolve_arg(arg)
        left_out.extend(skipped)
        for entry, item in found:
            if entry.identity in first_seen:
                left_out.append(LeftOut(item.name, READ_ALREADY, first_seen[entry.identity]))
                continue
            first_seen[entry.identity] = item.name
            files.append(replace(item, given=arg))
    return InputScan(tuple(files), tuple(dict.fromkeys(left_out)))  # an entry two arguments both reach, once


def resolve_inputs(args: InputArgs) -> list[InputFile]:
    """The files of ``scan_inputs(args)`` alone."""
    return list(scan_inputs(args).files)


def _resolve_arg(arg: str) -> tuple[list[tuple[_Entry, InputFile]], list[LeftOut]]:
    fs, path = filesystem_for(arg)
    info = _file_info(arg, fs, path)
    if info.type == pafs.FileType.NotFound and _has_wildcard(arg):
        return _resolve_glob(arg)
    if info.type == pafs.FileType.NotFound:
        prefixed = _megatron_prefix(arg, fs, path)
        if prefixed is not None:
            return prefixed
        check_bucket(arg, fs, path)
        raise InputError(arg, "does not exist", fix="check the path")
    if info.type == pafs.FileType.Directory:
        lister = _list(arg, fs, path, FOLDER_SCAN)
        if not lister.files and not any(e.why == READ_ALREADY for e in lister.left_out):
            raise InputError(arg, "folder holds no input files" + _left_out_hint(lister.left_out),
                             fix="point at a folder of *.parquet, *.jsonl[.gz|.zst] or *.arrow files, or a "
                                 "save_to_disk folder (docs/usage.md#input-formats)")
        return _input_files(lister), lister.left_out
    if path.lower().endswith(_IDX):  # a Megatron dataset named by its index: read through its .bin
        info = _file_info(arg, fs, path[: -len(_IDX)] + _BIN)
        if info.type != pafs.FileType.File:
            raise InputError(arg, "is a Megatron .idx without its .bin beside it",
                             fix="restore the .bin, or leave the dataset out of the inputs")
        path = path[: -len(_IDX)] + _BIN
        arg = arg[: -len(_IDX)] + _BIN

    def exists(other: str) -> bool:
        return bool(_file_info(arg, fs, other).type == pafs.FileType.File)

    fmt = format_of(path, exists)
    if fmt is None:
        raise InputError(arg, "is no input format bestfit reads, by its name",
                         fix="name Parquet files *.parquet, JSON Lines files *.jsonl (optionally .gz or .zst) and "
                             "Arrow files *.arrow (docs/usage.md#input-formats)")
    reason = input_formats()[fmt].not_data(fs, path)
    if reason is not None:
        raise InputError(arg, f"holds {reason}", fix="point at the data files (docs/usage.md#input-formats)")
    entry = _Entry(path, posixpath.basename(path), info.size, info.mtime_ns, _identity(fs, path))
    return [(entry, InputFile(_display(arg, path), fmt, fs, path, info.size, info.mtime_ns))], []


def _megatron_prefix(arg: str, fs: pafs.FileSystem, path: str) -> tuple[list[tuple[_Entry, InputFile]],
                                                                          list[LeftOut]] | None:
    """A Megatron dataset given as its prefix (``data/corpus`` for ``corpus.bin`` + ``corpus.idx``), or None when
    ``PREFIX.bin`` does not exist either."""
    info = _file_info(arg, fs, path + _BIN)
    if info.type != pafs.FileType.File:
        return None
    if _file_info(arg, fs, path + _IDX).type != pafs.FileType.File:
        raise InputError(arg + _IDX, "does not exist: a Megatron prefix needs its .bin and its .idx",
                         fix=f"restore the .idx, or pass {arg + _BIN} with --stream-dtype and --split-at if it is a "
                             "flat token stream")
    return _resolve_arg(arg + _BIN)


def _resolve_glob(arg: str) -> tuple[list[tuple[_Entry, InputFile]], list[LeftOut]]:
    base, parts = _split_glob(arg)
    fs, root = filesystem_for(base)
    info = _file_info(arg, fs, root)
    lister = _list(base, fs, root, _Pattern.of(parts)) if info.type == pafs.FileType.Directory else None
    if lister is None or not lister.files:
        raise InputError(arg, "glob matches no files" + _left_out_hint(lister.left_out if lister else []),
                         fix="check the pattern, or quote it for your shell")
    return _input_files(lister), lister.left_out


def _input_files(lister: _Lister) -> list[tuple[_Entry, InputFile]]:
    return [(e, InputFile(lister.display(e.fs_path), e.fmt or format_of(e.fs_path, lister.exists) or "jsonl",
                          lister.fs, e.fs_path, e.size, e.mtime_ns)) for e in lister.files]


def _identity(fs: pafs.FileSystem, path: str) -> tuple[Any, ...]:
    """What makes two spellings of a path the same file: device and inode on a local disk (links and hard links
    alike), the path on an object store."""
    if isinstance(fs, pafs.LocalFileSystem):
        st = os.stat(path)
        return ("local", st.st_dev, st.st_ino)
    return (fs.type_name, path)


def _left_out_hint(left_out: Sequence[LeftOut]) -> str:
    note = left_out_note(left_out)
    return f"; {note}" if note else ""


def _local_real_path(arg: str) -> str | None:
    """The resolved local path of a local path or ``file://`` URI (links followed); None for other stores."""
    if arg == STDIN:
        return None
    if _is_uri(arg):
        if not arg.startswith("file://"):
            return None
        arg = filesystem_for(arg)[1]
    return os.path.realpath(arg)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_output_location(out: str, given: InputArgs, inputs: Sequence[InputFile]) -> None:
    """Refuse an OUT inside an input folder (a rerun would read its own output) or holding an input file.

    Paths are compared after resolving links and ``file://`` URIs, so no spelling of a folder gets past it.
    """
    out_real = _local_real_path(out)
    if out_real is None:
        return
    for arg in input_args(given):
        root = _local_real_path(arg)
        if root is not None and os.path.isdir(root) and _inside(out_real, root):
            raise OutputError(f"{out}: OUT lies inside the input folder {arg}",
                              fix="choose an OUT outside the folders you read")
    for item in inputs:
        if not item.is_stdin and item.is_local and _inside(
                os.path.realpath(item.fs_path), out_real):
            raise OutputError(f"{out}: OUT holds the input file {item.name}",
                              fix="choose a new folder for OUT")


def check_output_file(out: str, given: InputArgs, inputs: Sequence[InputFile], *, what: str) -> None:
    """Refuse an output file that is one of the inputs, or lies inside an input folder (a rerun would read it back).

    Paths are compared after resolving links and ``file://`` URIs, as for ``check_output_location``.
    """
    out_real = _local_real_path(out)
    if out_real is None:
        return
    for item in inputs:
        if not item.is_stdin and item.is_local and os.path.realpath(
                item.fs_path) == out_real:
            raise OutputError(f"{what} {out}: is the input file {item.name}; writing it would destroy that input",
                              fix=f"give {what} a new file name")
    for arg in input_args(given):
        root = _local_real_path(arg)
        if root is not None and os.path.isdir(root) and _inside(out_real, root):
            raise OutputError(f"{what} {out}: lies inside the input folder {arg} (a rerun would read it as an input)",
                              fix=f"give {what} a path outside the folders you read")
