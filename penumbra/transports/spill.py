"""Spilled objects on a node's local disk: one file per object.

The core decides what to spill and when (``core/objects.py``); the daemon
carries out its ``SpillObjects``/``RestoreObject``/``DeleteSpilled`` with a
``SpillDir``, off the event loop (``trio.to_thread``).

Layout: ``<root>/penumbra-spill-<session>/`` holds ``<object id hex>``
files and ``owner`` (the daemon's pid).  ``root`` is the
``object_spilling_directory`` (default: the session directory).  The
session directory records where its spill directory is (``spill_dir``), so
whoever cleans up after a daemon -- its own shutdown, ``penumbra stop``,
the launcher after a SIGKILL, or the next daemon to start (a directory
whose owner is dead) -- removes the files too.

A file is written under a temporary name and renamed, so a crash never
leaves a truncated object under a real name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from typing import Any

from .session import pid_alive

__all__ = ["SpillDir", "spill_dir_of", "cleanup_spill", "cleanup_stale_spill_dirs", "parse_spilling_config"]

PREFIX = "penumbra-spill-"
_RECORD = "spill_dir"  # in the session directory: the path of its spill directory


def spill_dir_of(root: str, session: str) -> str:
    return os.path.join(root, PREFIX + session)


class SpillDir:
    """The spill files of one daemon (one session)."""

    def __init__(self, root: str, session: str, session_dir: str | None = None) -> None:
        self.root = root
        self.path = spill_dir_of(root, session)
        self.session_dir = session_dir
        self.created = False

    def _ensure(self) -> None:
        """Create the directory on the first spill (most sessions never
        spill), and record it in the session directory."""
        if self.created and os.path.isdir(self.path):
            return
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise NotADirectoryError(f"the object spilling directory {self.root} is a file, not a directory")
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        with open(os.path.join(self.path, "owner"), "w") as f:
            f.write(str(os.getpid()))
        if self.session_dir:
            with contextlib.suppress(OSError), open(os.path.join(self.session_dir, _RECORD), "w") as f:
                f.write(self.path)
        self.created = True

    def file(self, oid: bytes) -> str:
        return os.path.join(self.path, bytes(oid).hex())

    def write(self, oid: bytes, data: Any) -> None:
        """Write one object's bytes (a buffer).  Raises OSError (ENOSPC,
        EACCES, ...); nothing is left behind then."""
        self._ensure()
        final = self.file(oid)
        tmp = final + ".tmp"
        try:
            with open(tmp, "wb", buffering=0) as f:
                view = memoryview(data).cast("B")
                done = 0
                while done < len(view):
                    done += f.write(view[done:done + (64 << 20)])
            os.rename(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def read(self, oid: bytes) -> bytes:
        """One object's bytes (FileNotFoundError if it was never spilled)."""
        path = self.file(oid)
        with open(path, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            buf = bytearray(size)
            view = memoryview(buf)
            got = 0
            while got < size:
                n = f.readinto(view[got:])
                if not n:
                    raise OSError(f"spill file {path} is shorter than it was ({got} of {size} bytes)")
                got += n
        return buf

    def has(self, oid: bytes) -> bool:
        return os.path.exists(self.file(oid))

    def delete(self, oid: bytes) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.file(oid))

    def files(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.path) if n != "owner")
        except FileNotFoundError:
            return []

    def cleanup(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self.created = False


def cleanup_spill(session_dir: str) -> bool:
    """Remove the spill directory a session recorded (after its daemon
    stopped or was killed); True if there was one."""
    try:
        with open(os.path.join(session_dir, _RECORD)) as f:
            path = f.read().strip()
    except OSError:
        return False
    if not os.path.basename(path).startswith(PREFIX):
        return False  # not ours: never remove anything else
    shutil.rmtree(path, ignore_errors=True)
    return True


def cleanup_stale_spill_dirs(root: str) -> list[str]:
    """Remove the spill directories under ``root`` whose daemon is gone
    (killed before it could clean up); returns their paths."""
    gone = []
    try:
        names = os.listdir(root)
    except OSError:
        return gone
    for name in names:
        if not name.startswith(PREFIX):
            continue
        path = os.path.join(root, name)
        try:
            with open(os.path.join(path, "owner")) as f:
                pid = int(f.read().strip() or 0)
        except (OSError, ValueError):
            continue  # being created, or not a directory of ours
        if not pid_alive(pid):
            shutil.rmtree(path, ignore_errors=True)
            gone.append(path)
    return gone


def parse_spilling_config(value: Any) -> str | None:
    """The directory in Ray's ``object_spilling_config`` (a JSON string or a
    dict: ``{"type": "filesystem", "params": {"directory_path": DIR}}``).

    Raises:
        ValueError: not that shape (another storage type, no directory).
    """
    if value is None or value == "":
        return None
    cfg = value
    if isinstance(value, str):
        try:
            cfg = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"object_spilling_config is not valid JSON ({e}): give "
                             '\'{"type": "filesystem", "params": {"directory_path": "/some/dir"}}\'') from None
    if not isinstance(cfg, dict) or cfg.get("type", "filesystem") != "filesystem":
        raise ValueError(f"object_spilling_config {value!r}: only the \"filesystem\" type is supported, as "
                         '{"type": "filesystem", "params": {"directory_path": "/some/dir"}}')
    path = (cfg.get("params") or {}).get("directory_path")
    if isinstance(path, (list, tuple)):
        path = path[0] if path else None
    if not isinstance(path, str) or not path:
        raise ValueError(f"object_spilling_config {value!r} names no directory: set "
                         '"params": {"directory_path": "/some/dir"}')
    return path
