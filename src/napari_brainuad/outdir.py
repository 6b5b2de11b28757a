"""Output folders: checked writable before any work starts, locked while a run writes into them."""
from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from .io import OutputError

LOCK_FILE = ".brainuad.lock"
"""Held (an OS file lock, released when its process ends, even when killed) while a run writes."""


def prepare_out_dir(out_dir: Path) -> Path:
    """Create ``out_dir`` if needed and prove it writable; :class:`OutputError` in one sentence otherwise."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputError(f"{out_dir}: is a file (or lies under one), not an output folder.") from None
    except OSError as exc:
        raise OutputError(f"{out_dir}: output folder cannot be created ({reason(exc)}).") from None
    try:
        with tempfile.TemporaryFile(dir=out_dir) as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        raise OutputError(f"{out_dir}: output folder is not writable ({reason(exc)}).") from None
    return out_dir


@contextmanager
def output_lock(out_dir: Path) -> Iterator[None]:
    """Hold ``out_dir``'s lock file for one run; a second run gets :class:`OutputError` naming the holder.

    A run that holds the lock may remove temporaries it finds: no live run can own them.
    """
    path = Path(out_dir) / LOCK_FILE
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise OutputError(f"{out_dir}: another brainuad run ({holder(path)}) is writing into this folder; "
                          "wait for it to finish or choose another output folder.") from None
    except OSError as exc:
        raise OutputError(f"{out_dir}: output folder cannot be locked ({reason(exc)}).") from None
    try:
        path.write_text(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}",
                        encoding="utf-8")
        yield
    finally:
        lock.release()


def holder(path: Path) -> str:
    """Who holds a lock file, as it wrote itself in."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")[:200].strip()
    except OSError:
        text = ""
    return text or "holder unknown"


def reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__
