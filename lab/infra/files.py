"""Writing and reading files that someone else may have planted things beside: never through a
symbolic link, never half-written, never a FIFO that hangs a read.

Every file the lab writes goes through here: a run folder's files (`lab.results.RunFolder` owns
their paths), readiness files, a mock's spec file. The rules:
- A directory is entered one component at a time with `O_NOFOLLOW | O_DIRECTORY`, relative to
  its parent's descriptor, so a link planted anywhere below the root is refused, not followed.
- A file is replaced atomically: written to a fresh temporary name created with
  `O_CREAT | O_EXCL | O_NOFOLLOW` (a planted `x.tmp` link cannot be written through, and a
  name is never reused), then renamed over the target (a rename replaces a link, it does not
  follow it).
- An append opens with `O_NOFOLLOW` and checks it got a regular file with one link.
- A read opens with `O_NOFOLLOW | O_NONBLOCK`, checks for a regular file, and stops at a size
  limit.
Problems raise `UnsafePath` (a ConfigError: exit status 2) naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from lab.errors import ConfigError

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NOFOLLOW = os.O_NOFOLLOW


class UnsafePath(ConfigError):
    """A path the lab refuses to write or read through (a link, a FIFO, a directory...)."""


def _refusal(path: Path, exc: OSError, what: str) -> UnsafePath:
    if exc.errno in (errno.ELOOP, errno.EMLINK):
        why = "is a symbolic link; the lab never follows one inside a folder it writes to"
    elif exc.errno == errno.ENOTDIR:
        why = "is not a directory (or a link to one)"
    elif exc.errno == errno.ENOENT:
        why = "does not exist"
    else:
        why = exc.strerror or str(exc)
    return UnsafePath(f"{path}: {why}; cannot {what}")


def _component(name: str, where: Path) -> str:
    """`name` if it is one path component: never `..`, never a path with a slash in it."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise UnsafePath(f"{where}: {name[:100]!r} is not a file name; refusing it")
    return name


class Dir:
    """An open directory: every name below it is ONE component, resolved relative to its
    descriptor (a name from a file, like a trial id, can never climb out with `../`)."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd, self.path = fd, path

    def write(self, name: str, data: bytes, *, mode: int = 0o666) -> None:
        """Replace `name` with `data` atomically (mode is masked by the umask)."""
        with self.writer(name, mode=mode) as f:
            f.write(data)

    @contextlib.contextmanager
    def writer(self, name: str, *, mode: int = 0o666) -> Iterator[BinaryIO]:
        """A binary file that replaces `name` when the block ends without an exception."""
        _component(name, self.path)
        tmp = f".{name}.{secrets.token_hex(6)}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, mode, dir_fd=self.fd)
        except OSError as exc:
            raise _refusal(self.path / tmp, exc, "write a temporary file") from None
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
            os.replace(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self.fd)
            raise

    def append(self, name: str, data: bytes, *, fsync: bool = True) -> None:
        """Append in one write (a crash leaves all of it or a torn tail) to a regular file."""
        _component(name, self.path)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(name, flags, 0o666, dir_fd=self.fd)
        except OSError as exc:
            raise _refusal(self.path / name, exc, "append to it") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            os.close(fd)
            raise UnsafePath(
                f"{self.path / name}: not a plain file (a FIFO, a device or a hard link); "
                "cannot append to it"
            )
        with os.fdopen(fd, "ab") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(fd)

    def read(self, name: str, *, limit: int) -> bytes:
        """The bytes of regular file `name`, at most `limit` of them (UnsafePath if larger)."""
        _component(name, self.path)
        flags = os.O_RDONLY | _NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, dir_fd=self.fd)
        except OSError as exc:
            raise _refusal(self.path / name, exc, "read it") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UnsafePath(f"{self.path / name}: not a regular file; cannot read it")
        with os.fdopen(fd, "rb") as f:
            try:
                data = f.read(limit + 1)
            except OSError as exc:
                raise _refusal(self.path / name, exc, "read it") from None
        if len(data) > limit:
            raise UnsafePath(
                f"{self.path / name}: larger than {limit:,} bytes; refusing to read it"
            )
        return data

    def exists(self, name: str) -> bool:
        """True if `name` is there (a link counts: it is not followed)."""
        _component(name, self.path)
        try:
            os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def names(self) -> list[str]:
        return sorted(os.listdir(self.fd))

    def fresh_subdir(self, name: str) -> Path:
        """A new, empty directory `name`; an older one of that name is moved aside to
        `name.1`, `name.2`, ... (kept for the record), so nothing planted in it is used."""
        _component(name, self.path)
        if self.exists(name):
            for n in range(1, 10_000):
                if not self.exists(f"{name}.{n}"):
                    os.rename(name, f"{name}.{n}", src_dir_fd=self.fd, dst_dir_fd=self.fd)
                    break
        try:
            os.mkdir(name, dir_fd=self.fd)
        except OSError as exc:
            raise _refusal(self.path / name, exc, "create it") from None
        return self.path / name


@contextlib.contextmanager
def directory(root: Path, *parts: str, create: bool = False) -> Iterator[Dir]:
    """`root/parts...` opened without following a link below `root` (`root` itself may be one:
    the caller chose it). `create` makes missing components."""
    path = Path(root)
    try:
        fd = os.open(path, _DIR)
    except OSError as exc:
        raise _refusal(path, exc, "open it as a directory") from None
    try:
        for part in parts:
            _component(part, path)
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, dir_fd=fd)
            path = path / part
            try:
                new = os.open(part, _DIR | _NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                if exc.errno == errno.ENOTDIR and _is_link(part, fd):  # O_DIRECTORY says ENOTDIR
                    exc = OSError(errno.ELOOP, "a symbolic link")
                raise _refusal(path, exc, "open it as a directory") from None
            os.close(fd)
            fd = new
        yield Dir(fd, path)
    finally:
        os.close(fd)


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def atomic_write(path: Path, data: bytes | str, *, mode: int = 0o666) -> None:
    """Replace the file at `path` atomically, without following a link at `path` or at the
    temporary name (mode 0o600 for anything another user must not read)."""
    payload = data.encode() if isinstance(data, str) else data
    with directory(path.parent) as d:
        d.write(path.name, payload, mode=mode)


def read_file(path: Path, *, limit: int) -> bytes:
    """The bytes of the regular file at `path` (not through a link at `path`), at most `limit`."""
    with directory(path.parent) as d:
        return d.read(path.name, limit=limit)


def refuse_links(root: Path, *, limit: int = 1_000_000) -> None:
    """UnsafePath if anything below `root` is a symbolic link, a FIFO, a socket or a device
    (or if there are more than `limit` entries); links are never followed."""
    todo, seen = [Path(root)], 0
    while todo:
        try:
            entries = list(os.scandir(todo.pop()))
        except OSError as exc:
            raise _refusal(root, exc, "list it") from None
        for entry in entries:
            seen += 1
            path = Path(entry.path)
            if seen > limit:
                raise UnsafePath(f"{root}: more than {limit:,} entries; not a folder the lab wrote")
            if entry.is_symlink():
                raise UnsafePath(
                    f"{path}: is a symbolic link; a folder the lab wrote holds none, and the "
                    "lab never follows one: remove it, or refuse the folder"
                )
            if entry.is_dir(follow_symlinks=False):
                todo.append(path)
            elif not entry.is_file(follow_symlinks=False):
                raise UnsafePath(f"{path}: not a regular file or directory (a FIFO, a socket?)")
