"""Safe file access: reads that name the file in every error, and atomic writes."""

from __future__ import annotations

import contextlib
import os
import tempfile

from unroll.errors import InputError


def _new_file_mode(path: str) -> int:
    """Permission bits for a file written to `path` (kept if it exists)."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` atomically.

    The bytes go to a temporary file in the same directory that then replaces
    `path` with `os.replace`; on any error the temporary file is removed and
    an existing `path` is left untouched.

    Args:
        path: Destination file.
        data: The complete file contents.

    Raises:
        InputError: If the file cannot be written (missing directory, no
            permission, ...).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(
            dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp"
        )
    except OSError as e:
        raise InputError(f"{path}: cannot write file ({e.strerror or e})") from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _new_file_mode(path))
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise InputError(f"{path}: cannot write file ({e.strerror or e})") from e
        raise


def read_bytes(path: str | os.PathLike, what: str) -> bytes:
    """Reads a whole file, turning OS errors into InputError."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError as e:
        raise InputError(f"{os.fspath(path)}: {what} not found (no such file)") from e
    except OSError as e:
        raise InputError(f"{os.fspath(path)}: cannot read {what} ({e.strerror or e})") from e
