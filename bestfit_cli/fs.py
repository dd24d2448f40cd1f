"""The one filesystem layer: every input and output path goes through pyarrow's filesystems.

Local paths, ``file://`` and object-store URIs (``s3://``, ``gs://``) resolve to a ``pyarrow.fs.FileSystem``
plus a path on it, so readers and writers never touch ``open()`` or ``os`` directly.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
import pyarrow.fs as pafs

from .errors import InputError, OptionError, OutputError

Format = Literal["parquet", "jsonl"]
STDIN = "-"

_PARQUET_SUFFIXES = (".parquet", ".pq")
_JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
_COMPRESSED_SUFFIXES = (".gz", ".bz2", ".zst", ".lz4")


@dataclass(frozen=True)
class InputFile:
    """One input file: ``name`` is what messages show; ``fs`` and ``fs_path`` are how to read it."""

    name: str
    format: Format
    fs: pafs.FileSystem | None = None
    fs_path: str = ""
    size: int | None = None

    @property
    def is_stdin(self) -> bool:
        return self.name == STDIN

    @property
    def format_compressed(self) -> bool:
        return self.name.lower().endswith(_COMPRESSED_SUFFIXES)


def _is_uri(path: str) -> bool:
    return "://" in path


def filesystem_for(path: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and in-filesystem path for a local path or a URI."""
    if _is_uri(path):
        try:
            fs, fs_path = pafs.FileSystem.from_uri(path)
            return fs, str(fs_path)
        except Exception as exc:  # pyarrow raises several types for unsupported schemes
            raise InputError(path, f"cannot open this location: {exc}",
                             fix="use a local path or a URI pyarrow supports, such as s3://bucket/prefix") from None
    return pafs.LocalFileSystem(), os.path.abspath(path)


def format_of(path: str) -> Format | None:
    """The input format implied by a file name, or None when it is not an input bestfit reads."""
    name = path.lower()
    for suffix in _COMPRESSED_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    if name.endswith(_PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(_JSONL_SUFFIXES):
        return "jsonl"
    return None


def _display(arg: str, fs_path: str) -> str:
    if _is_uri(arg):
        scheme = arg.split("://", 1)[0]
        return f"{scheme}://{fs_path}"
    return os.path.relpath(fs_path) if not os.path.isabs(arg) else fs_path


def _is_hidden(relpath: str) -> bool:
    return any(part.startswith((".", "_")) for part in relpath.split("/") if part)


def _file_info(arg: str, fs: pafs.FileSystem, target: str | pafs.FileSelector) -> Any:
    """``fs.get_file_info`` with filesystem errors (permissions, name too long, I/O) as one-line input errors."""
    try:
        return fs.get_file_info(target)
    except (OSError, pa.ArrowException) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(arg, f"cannot be read ({detail})", fix="check the path and its permissions") from None


def _expand_folder(arg: str, fs: pafs.FileSystem, root: str) -> list[InputFile]:
    infos = _file_info(arg, fs, pafs.FileSelector(root, recursive=True))
    files = []
    for info in infos:
        rel = posixpath.relpath(info.path, root)
        fmt = format_of(info.path)
        if fmt is None or _is_hidden(rel) or info.type == pafs.FileType.Directory:
            continue
        if info.type != pafs.FileType.File:
            # A dangling link or a file that vanished: silently leaving it out would lose its documents.
            raise InputError(_display(arg, info.path), "is listed in the folder but cannot be read (a broken link?)",
                             fix="restore the file, or remove it from the folder")
        files.append(InputFile(_display(arg, info.path), fmt, fs, info.path, info.size))
    if isinstance(fs, pafs.LocalFileSystem):
        _refuse_dangling_links(arg, root)
    files.sort(key=lambda f: f.fs_path)
    if not files:
        raise InputError(arg, "folder holds no Parquet or JSONL files",
                         fix="point at a folder of *.parquet or *.jsonl[.gz|.zst] files")
    return files


def _refuse_dangling_links(arg: str, root: str) -> None:
    """pyarrow's listing leaves out links whose target is gone; their documents would vanish without a word."""
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith((".", "_"))]
        for name in names:
            path = os.path.join(folder, name)
            if format_of(name) and not name.startswith((".", "_")) and not os.path.exists(path):
                raise InputError(_display(arg, path), "cannot be read (a broken link?)",
                                 fix="restore the file, or remove it from the folder")


def _expand_glob(arg: str) -> list[str]:
    if _is_uri(arg):
        fs, pattern = filesystem_for(arg)
        base = pattern
        while any(ch in base for ch in "*?["):
            base = posixpath.dirname(base)
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        scheme = arg.split("://", 1)[0]
        return sorted(f"{scheme}://{i.path}" for i in infos if fnmatch.fnmatch(i.path, pattern))
    return sorted(glob.glob(arg, recursive=True))


InputArgs = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


def input_args(args: InputArgs) -> list[str]:
    """Input arguments as a list of strings: one path given from Python is one input, not one per character."""
    if isinstance(args, (str, os.PathLike)):
        return [os.fspath(args)]
    return [os.fspath(arg) for arg in args]


def resolve_inputs(args: InputArgs) -> list[InputFile]:
    """Expand input arguments into files, in the documented order.

    Arguments keep their order; a folder contributes its files in sorted path order (searched recursively,
    hidden and ``_``-prefixed entries skipped); a glob contributes its matches sorted; ``-`` is JSONL on stdin.
    """
    args = input_args(args)
    if not args:
        raise InputError("IN", "no input given", fix="pass one or more files, folders or globs, or - for stdin")
    if list(args).count(STDIN) > 1:
        raise OptionError("- (stdin) is given more than once", fix="read stdin once; pass files by name")
    resolved: list[InputFile] = []
    for arg in args:
        if arg == STDIN:
            resolved.append(InputFile(STDIN, "jsonl"))
            continue
        if any(ch in arg for ch in "*?["):
            matches = _expand_glob(arg)
            if not matches:
                raise InputError(arg, "glob matches no files", fix="check the pattern, or quote it for your shell")
            for match in matches:
                resolved.extend(_resolve_path(match, explicit=False))
            continue
        resolved.extend(_resolve_path(arg, explicit=True))
    return resolved


def _resolve_path(arg: str, *, explicit: bool) -> list[InputFile]:
    fs, path = filesystem_for(arg)
    info = _file_info(arg, fs, path)
    if info.type == pafs.FileType.NotFound:
        raise InputError(arg, "does not exist", fix="check the path")
    if info.type == pafs.FileType.Directory:
        return _expand_folder(arg, fs, path)
    fmt = format_of(path)
    if fmt is None:
        if not explicit:
            return []
        raise InputError(arg, "is neither Parquet nor JSONL by its name",
                         fix="name Parquet files *.parquet and JSON Lines files *.jsonl (optionally .gz or .zst)")
    return [InputFile(_display(arg, path), fmt, fs, path, info.size)]


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
        if not item.is_stdin and isinstance(item.fs, pafs.LocalFileSystem) and _inside(
                os.path.realpath(item.fs_path), out_real):
            raise OutputError(f"{out}: OUT holds the input file {item.name}",
                              fix="choose a new folder for OUT")
