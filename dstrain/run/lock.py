"""One run per output folder: an exclusive lock held for the whole run.

Why: two runs started into the same folder both trained, both wrote checkpoints, metrics
and recipe.json into it, and the folder ended up holding one run's files while the other
had printed its success line.  The fresh-run guard (checkpoints already present) cannot see
a run that has not saved yet, so the folder itself is locked.

How: rank 0 takes an ``fcntl.flock`` on ``<run>/.dstrain-run.lock`` and writes who holds it
(host, pid, start time).  The kernel drops a flock when its process dies, so a crash never
leaves the folder locked on the same host.  A file system shared by several hosts may not
carry flocks between them, so the holder also refreshes the file's modification time while
it trains (a heartbeat); a lock file naming another host whose heartbeat is recent is
respected even when the flock succeeds, and one whose heartbeat is older than
:data:`STALE_AFTER_S` is taken over (its run died without releasing it).
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Dict, Optional

from dstrain.errors import ConfigError

HEARTBEAT_S = 30.0
"""How often the holder refreshes the lock file's modification time while it trains."""
STALE_AFTER_S = 300.0
"""A lock file of another host untouched for this long belongs to a run that died."""


def _holder_text(info: Dict[str, Any]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"pid {info.get('pid')} on {info.get('host')}, started {started}"


class RunLock:
    """The exclusive lock of one run folder (taken by rank 0 only)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: Optional[int] = None
        self._last_beat = 0.0

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, flag: str = "--output_dir") -> None:
        """Take the lock or raise :class:`ConfigError` naming the run that holds it."""
        for _ in range(3):  # the holder may release (and unlink) between our open and our flock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise ConfigError(flag, f"{self.path.parent} is in use by another run ({self._describe()})",
                                  "wait for it to finish, or pass another --output_dir") from None
            if self._same_file(fd):
                break
            os.close(fd)
        else:  # pragma: no cover - three releases in a row between open and flock
            raise ConfigError(flag, f"could not lock {self.path}", "try again")
        other = self._other_live_host(fd)
        if other is not None:
            os.close(fd)
            raise ConfigError(flag, f"{self.path.parent} is in use by a run on another host ({_holder_text(other)}; "
                              f"lock file refreshed {time.time() - other['mtime']:.0f} s ago)",
                              f"wait for it to finish, or pass another --output_dir (a lock older than "
                              f"{STALE_AFTER_S:.0f} s is taken over)")
        info = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        self._last_beat = time.monotonic()

    def heartbeat(self) -> None:
        """Refresh the lock file's modification time, at most every :data:`HEARTBEAT_S` seconds."""
        if self._fd is not None and time.monotonic() - self._last_beat >= HEARTBEAT_S:
            os.utime(self.path)
            self._last_beat = time.monotonic()

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    # --- helpers --------------------------------------------------------------------
    def _same_file(self, fd: int) -> bool:
        try:
            return os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            return False

    def _read(self, fd: Optional[int] = None) -> Optional[Dict[str, Any]]:
        try:
            raw = os.pread(fd, 4096, 0) if fd is not None else self.path.read_bytes()[:4096]
            info = json.loads(raw.decode() or "null")
            mtime = os.fstat(fd).st_mtime if fd is not None else self.path.stat().st_mtime
        except (OSError, ValueError):
            return None
        return {**info, "mtime": mtime} if isinstance(info, dict) else None

    def _describe(self) -> str:
        info = self._read()
        return _holder_text(info) if info else "holder unknown"

    def _other_live_host(self, fd: int) -> Optional[Dict[str, Any]]:
        info = self._read(fd)
        if info is None or info.get("host") == socket.gethostname():
            return None  # no holder, or one on this host (its flock would have been held: it died)
        return info if time.time() - info["mtime"] < STALE_AFTER_S else None
