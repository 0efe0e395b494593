"""Atomic file writes: an output file is either complete or absent.

Every file a stage writes goes to a temporary file in the same directory, is flushed and
fsync'ed, then renamed over the target (rename is atomic on POSIX file systems).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

# Write errors that mean "no room for this output" (reported in one line, not as a bug)
NO_ROOM = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (the file system's or the process's file-size limit, ulimit -f)",
}


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file beside `path`; on success rename it to `path`, on error remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    binary = "b" in mode
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding,
                       newline=None if binary else "\n") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        _name_file(e, path)
        raise


def _name_file(e: BaseException, path: str | os.PathLike) -> None:
    if isinstance(e, OSError) and e.errno in NO_ROOM and e.filename is None:
        e.filename = str(path)  # a failed write() names no file; say which output it was


@contextlib.contextmanager
def naming(path: str | os.PathLike) -> Iterator[None]:
    """A full disk met inside the block is reported as met while writing `path`."""
    try:
        yield
    except OSError as e:
        _name_file(e, path)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary file name beside `path`, for writers that take a name rather than a file
    object (Keras' `model.save` wants a `.keras` suffix, `shutil.copyfile` a destination):
    renamed to `path` when the block succeeds, removed when it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy `src` to `dst` so that `dst` is either the complete copy or what it was before."""
    import shutil

    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Build a directory under a temporary name; it appears at `path` only when complete.

    `path` must not exist or be an empty directory. On any error the temporary directory
    is removed and `path` is left as it was.
    """
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            path.rmdir()
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _remove_dead_staging(directory: Path) -> None:
    """Staging directories left by a killed process (`.staging.PID.*`, PID no longer running)."""
    import shutil

    for d in directory.glob(".staging.*"):
        parts = d.name.split(".")
        pid = int(parts[2]) if len(parts) > 3 and parts[2].isdigit() else None
        if d.is_dir() and (pid is None or not _pid_alive(pid)):
            shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def staged_files(directory: str | os.PathLike, last: str = "manifest.json") -> Iterator[Path]:
    """Write a stage's files into a hidden staging directory; move them into `directory` together.

    On success every file is renamed into `directory` (`last`, the file whose presence marks
    a complete stage, after the others); on any error (a full disk, an interrupt) nothing is
    moved, so the previous outputs stay as they were, all of them.
    """
    import shutil

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _remove_dead_staging(directory)
    staging = Path(tempfile.mkdtemp(prefix=f".staging.{os.getpid()}.", dir=directory))
    try:
        yield staging
        names = sorted(p.name for p in staging.iterdir() if not p.name.startswith("."))
        for name in sorted(names, key=lambda n: n == last):
            os.replace(staging / name, directory / name)
    except OSError as e:
        if e.errno in NO_ROOM and e.filename and Path(e.filename).parent == staging:
            e.filename = str(directory / Path(e.filename).name)  # name the output, not the staging copy
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_lines(path: str | os.PathLike, lines: Iterable[str]) -> int:
    """Atomically write one line per item (items must not contain newlines). Returns the count."""
    n = 0
    with atomic_open(path) as f:
        for line in lines:
            f.write(line)
            f.write("\n")
            n += 1
    return n


def write_pairs(src_path: str | os.PathLike, tgt_path: str | os.PathLike,
                pairs: Iterable[tuple[str, str]]) -> int:
    """Atomically write line-aligned source and target files, one pair at a time (no text
    may contain a newline). Returns the count.

    Both files are open at once; a full disk is reported as met on the one whose write failed.
    """
    n = 0
    where = None
    with atomic_open(src_path) as fs, atomic_open(tgt_path) as ft:
        try:
            for s, t in pairs:
                where = src_path
                fs.write(s + "\n")
                where = tgt_path
                ft.write(t + "\n")
                where = None
                n += 1
        except OSError as e:
            if where is not None:
                _name_file(e, where)
            raise
    return n


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, sort_keys=False)
        f.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def iter_lines(path: str | os.PathLike) -> Iterator[str]:
    """The lines of a UTF-8 file written by this package, read lazily ('\\n' ends removed)."""
    with open(path, encoding="utf-8", newline="\n") as f:
        for line in f:
            yield line[:-1] if line.endswith("\n") else line


def read_lines(path: str | os.PathLike) -> list[str]:
    """Read a UTF-8 file written by this package (one sentence per line, '\\n' ends)."""
    return list(iter_lines(path))


def count_lines(path: str | os.PathLike, chunk: int = 1 << 20) -> int:
    """Number of lines `read_lines` would return, counted without holding the file in memory."""
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(chunk):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


def cpuinfo(field: str) -> str | None:
    """The first value of `field` in /proc/cpuinfo ("model name", "cpu MHz"), or None."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None
