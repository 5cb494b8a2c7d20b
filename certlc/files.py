"""Private, crash-safe files for certlc's state directories (emulator, dev CA).

Every file written there holds either key material, tokens' keys or state a restart must
find intact, so writes go to a temporary file in the same directory, are fsynced and then
renamed over the target: a crash leaves the old file or the new one, never half of either.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["PRIVATE_DIR_MODE", "PRIVATE_FILE_MODE", "atomic_write", "ensure_private_dir", "open_sqlite", "read_or_create_private"]

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) readable by the owner only; return it."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    with contextlib.suppress(OSError):  # not ours to chmod (e.g. a shared parent): leave it
        path.chmod(PRIVATE_DIR_MODE)
    return path


def atomic_write(path: Path, data: bytes | str, mode: int = PRIVATE_FILE_MODE) -> None:
    """Replace ``path`` with ``data`` atomically (temp file + fsync + rename), created ``mode``."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        tmp.chmod(mode)  # mkstemp already makes it 0600; this covers other modes
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def read_or_create_private(path: Path, make: bytes) -> bytes:
    """Return the bytes of ``path``; create it first with ``make`` (mode 0600) if it is missing.

    O_EXCL makes creation race-free: when two starts race, one writes and both read the winner.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except FileExistsError:
        return path.read_bytes()
    try:
        os.write(fd, make)
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(path.parent)
    return make


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is; Windows cannot open directories.
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def open_sqlite(path: Path, schema: str) -> Iterator[sqlite3.Connection]:
    """A connection to the SQLite store at ``path`` with ``schema`` applied: autocommit (callers
    open their own transactions), WAL so readers never wait for the worker's writers, and a
    30 s wait for a lock instead of failing at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(schema)
        yield db
    finally:
        db.close()
