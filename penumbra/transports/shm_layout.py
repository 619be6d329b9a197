"""The files of a shared-memory store session and the byte layout of its metadata.

Everything :class:`~penumbra.transports.shm_store.ShmStore` and its parts
agree on, below the store itself (see ``shm_store``'s docstring for the
theory of operation):

* where a session's files live and what they are called, and the
  housekeeping any process may do on them without attaching
  (:func:`cleanup_session`, :func:`stale_sessions`,
  :func:`cleanup_stale_sessions`);
* the layout of the meta file (a 4 KiB header, the object table of 64-byte
  slots, the two free-extent arrays) and of a table entry;
* the store's errors;
* the thin wrappers over the system calls the store relies on
  (``posix_fallocate`` with a clean out-of-space error, OFD byte-range
  locks, the ``flock`` + thread lock around the metadata).
"""

from __future__ import annotations

import errno
import fcntl
import glob
import os
import re
import struct
import threading
import zlib
from typing import Any

from .session import pid_alive

ROOT = "/dev/shm"
ID_SIZE = 20
PREFIX = "penumbra-"

_SESSION_RE = re.compile(r"^[A-Za-z0-9_.]{1,100}$")

# ---------------------------------------------------------------- layout
# Meta file: a 4 KiB header, the object table, then the free-extent arrays.
_META_MAGIC = b"PNSTORE1"
_VERSION = 1
_HDR_SIZE = 4096
_H_MAGIC = 0  # 8s
_H_VERSION = 8  # u32
_H_SLOTS = 12  # u32
_H_ARENA = 16  # u64 arena size
_H_COMMITTED = 24  # u64 bytes of the arena reserved with fallocate
_H_NEXT = 32  # u64 number of free extents
_H_MAXEXT = 40  # u64 capacity of the extent arrays
_H_ENTRIES = 48  # u64 occupied table slots (objects + zombies)
_H_ZOMBIES = 56  # u64 zombie slots
_H_USED = 64  # u64 arena bytes allocated (zombies included)
_H_FILEBYTES = 72  # u64 bytes held in per-object files
_H_PID = 80  # u64 pid of the process that created the store
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")

_SLOT = 64
_ENTRY = struct.Struct("<20sBBxxQQQI12x")  # key, state, kind, offset, alloc, size, pid
_ST_EMPTY, _ST_CREATED, _ST_SEALED, _ST_ZOMBIE = 0, 1, 2, 3
_KIND_ARENA, _KIND_FILE = 0, 1
_STATE_AT = 20

_ALIGN = 64  # arena allocations are multiples of 64 bytes at 64-byte offsets
_COMMIT_STEP = 16 << 20  # arena bytes reserved at a time
_CHUNK = 2 << 20  # per-process pre-faulting granularity
_POPULATE_MIN = 256 << 10  # regions smaller than this just take page faults
_MADV_POPULATE_READ = 22  # Linux >= 5.14
_MAX_LOAD = 0.85  # refuse inserts above this table load factor

# struct flock on Linux x86-64 / aarch64: short type, short whence, off_t
# start, off_t len, pid_t pid (0 for OFD locks), padding.
_FLOCK = struct.Struct("hhqqi4x")


# ---------------------------------------------------------------- errors


class StoreError(Exception):
    """Base class of the object store's errors."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """Attaching to a session that has no object store (not created yet, or
    cleaned up)."""


class ObjectExistsError(StoreError):
    """``create`` of an id that is already in the store (created or sealed)."""


class ObjectNotFoundError(StoreError, KeyError):
    """The id is not in the store, or not sealed yet."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class StoreFullError(StoreError):
    """No room for the object: the table is full, or no space could be found
    and spilling to files is disabled.  Free objects and retry."""


class ShmSpaceError(StoreFullError):
    """The shared-memory filesystem itself refused the space (ENOSPC, EFBIG,
    a quota...).  ``errno`` is the system error number."""

    def __init__(self, message: str, err: int | None = None) -> None:
        super().__init__(message)
        self.errno = err


# ---------------------------------------------------------------- helpers


def _check_session(session: str) -> str:
    if not isinstance(session, str) or not _SESSION_RE.match(session):
        raise ValueError(
            f"invalid session name {session!r}: use 1-100 letters, digits, '_' or '.' "
            "(no '-', so that one session's files never match another's prefix)"
        )
    return session


def _prefix(session: str, root: str) -> str:
    return os.path.join(root, f"{PREFIX}{_check_session(session)}-")


def session_segments(session: str, root: str = ROOT) -> list[str]:
    """Every file of ``session`` in ``root``."""
    return sorted(glob.glob(glob.escape(_prefix(session, root)) + "*"))


def cleanup_session(session: str, root: str = ROOT) -> int:
    """Unlink every file of ``session``; returns how many were removed.

    Safe to call from any process at any time (e.g. by a parent after its
    node daemon crashed), and more than once.  Views that processes still
    hold stay valid: unlinked files live on until they are unmapped.
    """
    n = 0
    for path in session_segments(session, root):
        try:
            os.unlink(path)
            n += 1
        except FileNotFoundError:
            pass
    return n


def stale_sessions(root: str = ROOT) -> list[str]:
    """This user's sessions in ``root`` whose creating process is gone
    (exited, killed, or a zombie nobody reaps)."""
    out = []
    me = os.getuid()
    for path in glob.glob(os.path.join(glob.escape(root), PREFIX + "*-meta")):
        session = os.path.basename(path)[len(PREFIX) : -len("-meta")]
        try:
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_uid != me:
                    continue  # another user's: not ours to judge (nor to remove)
                hdr = f.read(_H_PID + 8)
            if len(hdr) < _H_PID + 8 or hdr[:8] != _META_MAGIC:
                continue
            pid = _U64.unpack_from(hdr, _H_PID)[0]
        except OSError:
            continue
        if not _SESSION_RE.match(session):
            continue
        if not pid_alive(pid):
            out.append(session)
    return sorted(out)


def cleanup_stale_sessions(root: str = ROOT, only: set[str] | None = None) -> list[str]:
    """Remove the files of every stale session (see :func:`stale_sessions`)
    in ``root``, or only of those named in ``only``; the sessions removed.

    A node daemon calls this as it starts, with the sessions of its sessions
    directory, so that a SIGKILLed daemon's shared memory is freed by the
    next ``penumbra start`` or ``init()`` rather than kept until reboot.
    """
    done = []
    for session in stale_sessions(root):
        if only is not None and session not in only:
            continue
        if cleanup_session(session, root):
            done.append(session)
    return done


def _space_error(what: str, e: OSError, root: str) -> ShmSpaceError:
    try:
        st = os.statvfs(root)
        free = f"; {st.f_bavail * st.f_frsize / 2**20:.0f} MiB free in {root}"
    except OSError:
        free = ""
    name = errno.errorcode.get(e.errno or 0, str(e.errno))
    return ShmSpaceError(
        f"out of shared memory: could not reserve {what} ({name}: {e.strerror}){free}. "
        "Delete objects, or give the object store less memory than the shared-memory "
        "filesystem holds.",
        e.errno,
    )


def _fallocate(fd: int, offset: int, length: int, what: str, root: str) -> None:
    try:
        os.posix_fallocate(fd, offset, length)
    except OSError as e:
        raise _space_error(what, e, root) from e


def _ofd_lock(fd: int, ltype: int, start: int, length: int) -> None:
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(ltype, os.SEEK_SET, start, length, 0))


def _ofd_locked_by_others(fd: int, start: int, length: int) -> bool:
    res = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, start, length, 0))
    return _FLOCK.unpack(res)[0] != fcntl.F_UNLCK


def _home(key: bytes, nslots: int) -> int:
    return zlib.crc32(key) % nslots


def _zombie_key(offset: int) -> bytes:
    return b"\xffZOMBIE\xff" + offset.to_bytes(8, "little") + b"\x00\x00\x00\x00"


def _as_id(object_id: Any) -> bytes:
    if type(object_id) is not bytes:
        if not isinstance(object_id, (bytes, bytearray, memoryview)):
            raise TypeError(f"object ids are bytes, got {type(object_id).__name__}")
        object_id = bytes(object_id)
    if len(object_id) != ID_SIZE:
        raise ValueError(f"object ids are {ID_SIZE} bytes, got {len(object_id)}")
    return object_id


class _MetaLock:
    """Mutual exclusion between processes (flock) and threads (Lock)."""

    __slots__ = ("_thread", "fd")

    def __init__(self, fd: int) -> None:
        self._thread = threading.Lock()
        self.fd = fd

    def __enter__(self) -> None:
        self._thread.acquire()
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread.release()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            self._thread.release()
