"""Object store benchmarks: which way of writing into /dev/shm is fast, and
what the store built on the winner delivers.

    python bench/bench_store.py            # everything (about a minute)
    python bench/bench_store.py --quick    # fewer repetitions, smaller sizes

Part A writes one 100 MiB buffer into shared memory in every candidate way
(per-object files with ftruncate/fallocate/MAP_POPULATE/write(), hugepage
advice, a preallocated arena, and four copy methods) and reports GB/s (best
of N).  Part B measures ``ShmStore``: put (serialize + create + copy + seal)
and get (open + deserialize, zero-copy) of a 100 MiB numpy array, in the
arena (cold and warm) and in per-object-file mode.  Part C measures small
values: serialize + deserialize round trips and store put/get latency.

Nothing is left in /dev/shm: every file is unlinked, also on error.
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from penumbra.transports import serialization as ser
from penumbra.transports.shm_store import ShmStore, cleanup_session, new_session_name

ROOT = "/dev/shm"
MADV_POPULATE_READ = 22
MADV_HUGEPAGE = getattr(mmap, "MADV_HUGEPAGE", 14)


def best(fn: Callable[[int], float | None], reps: int) -> tuple[float, float]:
    """Run fn(i) reps times; fn returns its own timing or None (then the
    call is timed).  Returns (best, median) seconds."""
    times = []
    for i in range(reps):
        t0 = time.perf_counter()
        t = fn(i)
        times.append(t if t is not None else time.perf_counter() - t0)
    return min(times), statistics.median(times)


def row(name: str, nbytes: int, t: tuple[float, float], note: str = "") -> None:
    b, m = t
    print(f"  {name:<58} {nbytes / b / 1e9:7.2f} GB/s  (best {b * 1e3:7.2f} ms, median {m * 1e3:7.2f} ms) {note}")


# ------------------------------------------------------------- copy methods


def copy_mv(dst: memoryview, src: np.ndarray) -> None:
    dst[:] = memoryview(src).cast("B")


def copy_np(dst: memoryview, src: np.ndarray) -> None:
    np.copyto(np.frombuffer(dst, dtype=np.uint8), src)


def copy_np2(dst: memoryview, src: np.ndarray) -> None:
    d = np.frombuffer(dst, dtype=np.uint8)
    h = len(src) // 2
    th = threading.Thread(target=np.copyto, args=(d[:h], src[:h]))
    th.start()
    np.copyto(d[h:], src[h:])
    th.join()


def copy_pa(dst: memoryview, src: np.ndarray) -> None:
    ser.copy_into(dst, memoryview(src))  # pyarrow parallel memcpy above 8 MiB


COPIES = {"memoryview slice": copy_mv, "np.copyto": copy_np, "np.copyto x2 threads": copy_np2, "pyarrow memcpy x threads": copy_pa}


# ------------------------------------------------------------- part A


def part_a(n: int, reps: int) -> None:
    print(f"A. writing {n >> 20} MiB into /dev/shm (GB/s, higher is better)")
    src = np.random.default_rng(0).integers(0, 255, n, dtype=np.uint8)
    tag = new_session_name("bench")
    path = os.path.join(ROOT, f"penumbra-{tag}-x")

    def per_object(prep: str, flags: int = 0, copy=copy_mv, madv: int | None = None):
        def run(i: int) -> None:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                if prep == "fallocate":
                    os.posix_fallocate(fd, 0, n)
                else:
                    os.ftruncate(fd, n)
                m = mmap.mmap(fd, n, flags=mmap.MAP_SHARED | flags)
            finally:
                os.close(fd)
            try:
                if madv is not None:
                    try:
                        m.madvise(madv)
                    except OSError:
                        pass
                mv = memoryview(m)
                copy(mv, src)
                mv.release()
            finally:
                m.close()
                os.unlink(path)

        return run

    def write_syscall(i: int) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            mv = memoryview(src)
            off = 0
            while off < n:
                off += os.pwrite(fd, mv[off:], off)
        finally:
            os.close(fd)
            os.unlink(path)

    pop = getattr(mmap, "MAP_POPULATE", 0)
    try:
        print(" per-object files (a new file per object, pages allocated on the way):")
        row("ftruncate + mmap + memoryview copy", n, best(per_object("ftruncate"), reps))
        row("ftruncate + mmap + np.copyto", n, best(per_object("ftruncate", copy=copy_np), reps))
        row("ftruncate + mmap + np.copyto x2 threads", n, best(per_object("ftruncate", copy=copy_np2), reps))
        row("ftruncate + mmap(MAP_POPULATE) + memoryview copy", n, best(per_object("ftruncate", pop), reps))
        row("ftruncate + mmap(MAP_POPULATE) + pyarrow memcpy", n, best(per_object("ftruncate", pop, copy_pa), reps))
        row("posix_fallocate + mmap + memoryview copy", n, best(per_object("fallocate"), reps))
        row("posix_fallocate + mmap(MAP_POPULATE) + pyarrow memcpy", n, best(per_object("fallocate", pop, copy_pa), reps))
        row(
            "ftruncate + mmap + madvise(MADV_HUGEPAGE) + np.copyto",
            n,
            best(per_object("ftruncate", copy=copy_np, madv=MADV_HUGEPAGE), reps),
            "(tmpfs huge pages: see /sys/kernel/mm/transparent_hugepage/shmem_enabled)",
        )
        row("write() syscall, no mmap", n, best(write_syscall, reps))

        print(" arena (one file, pages reused from object to object):")
        # Cold: a fresh arena for every repetition (first use of its pages).
        def arena_cold(i: int) -> float:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.ftruncate(fd, n)
                m = mmap.mmap(fd, n)
                t0 = time.perf_counter()
                os.posix_fallocate(fd, 0, n)
                try:
                    m.madvise(MADV_POPULATE_READ)
                except OSError:
                    pass
                mv = memoryview(m)
                copy_pa(mv, src)
                t = time.perf_counter() - t0
                mv.release()
                m.close()
                return t
            finally:
                os.close(fd)
                os.unlink(path)

        row("cold: fallocate + MADV_POPULATE_READ + pyarrow memcpy", n, best(arena_cold, reps))

        # Pages exist but this process has not mapped them yet.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.posix_fallocate(fd, 0, n)

            def fresh_map(adv: int | None):
                def run(i: int) -> float:
                    m = mmap.mmap(fd, n)
                    t0 = time.perf_counter()
                    if adv is not None:
                        m.madvise(adv)
                    mv = memoryview(m)
                    copy_pa(mv, src)
                    t = time.perf_counter() - t0
                    mv.release()
                    m.close()
                    return t

                return run

            row("pages exist, new mapping, page faults + pyarrow memcpy", n, best(fresh_map(None), reps))
            row("pages exist, new mapping, MADV_POPULATE_READ + pyarrow memcpy", n, best(fresh_map(MADV_POPULATE_READ), reps))
            m = mmap.mmap(fd, n, flags=mmap.MAP_SHARED | pop)
            mv = memoryview(m)
            copy_mv(mv, src)
            for name, copy in COPIES.items():
                row(f"warm (mapped, reused pages): {name}", n, best(lambda i, copy=copy: copy(mv, src), reps))
            mv.release()
            m.close()
        finally:
            os.close(fd)
            os.unlink(path)
    finally:
        if os.path.exists(path):
            os.unlink(path)


# ------------------------------------------------------------- part B


def part_b(n: int, reps: int) -> None:
    print(f"B. ShmStore with a {n >> 20} MiB float64 numpy array")
    arr = np.random.default_rng(1).random(n // 8)
    session = new_session_name("bench")
    try:
        store = ShmStore(session, capacity=4 * n)
        oid = b"\x01" * 20

        # Cold: the first put into fresh arena pages.
        def cold(i: int) -> float:
            s = new_session_name("benchc")
            try:
                st = ShmStore(s, capacity=2 * n)
                t0 = time.perf_counter()
                st.put_serialized(oid, ser.serialize(arr))
                t = time.perf_counter() - t0
                st.close()
                return t
            finally:
                cleanup_session(s)

        row("put, arena cold (new store: fallocate + populate + copy)", n, best(cold, max(2, reps // 2)))

        # Reserved at start-up (what a daemon does with reserve() in a thread).
        def reserved(i: int) -> float:
            s = new_session_name("benchr")
            try:
                st = ShmStore(s, capacity=2 * n)
                t0 = time.perf_counter()
                st.reserve()
                t_res = time.perf_counter() - t0
                t0 = time.perf_counter()
                st.put_serialized(oid, ser.serialize(arr))
                t = time.perf_counter() - t0
                st.close()
                reserve_times.append(t_res)
                return t
            finally:
                cleanup_session(s)

        reserve_times: list[float] = []
        row("put, arena after reserve() (first write to reserved pages)", n, best(reserved, max(2, reps // 2)))
        print(f"  {'(reserve() of the ' + str(2 * n >> 20) + ' MiB arena took':<58} {min(reserve_times) * 1e3:7.1f} ms)")

        def put(i: int) -> float:
            store.delete(oid)
            t0 = time.perf_counter()
            store.put_serialized(oid, ser.serialize(arr))
            return time.perf_counter() - t0

        put(0)
        row("put, arena warm (serialize + create + copy + seal)", n, best(put, reps))
        old = ser.set_copy_threads(2)
        try:
            row("put, arena warm, set_copy_threads(2)", n, best(put, reps))
        finally:
            ser.set_copy_threads(old)

        def get(i: int) -> float:
            t0 = time.perf_counter()
            x = ser.deserialize(store.get(oid))
            t = time.perf_counter() - t0
            assert x.shape == arr.shape and not x.flags.writeable
            return t

        g = best(get, reps * 4)
        row("get, arena (lookup + pin + deserialize, zero-copy)", n, g, f"= {g[0] * 1e6:.0f} us")
        store.close()

        fstore = ShmStore(session + "f", capacity=0)

        def fput(i: int) -> float:
            fstore.delete(oid)
            t0 = time.perf_counter()
            fstore.put_serialized(oid, ser.serialize(arr))
            return time.perf_counter() - t0

        row("put, per-object file mode (capacity=0)", n, best(fput, reps))

        def fget(i: int) -> float:
            t0 = time.perf_counter()
            x = ser.deserialize(fstore.get(oid))
            t = time.perf_counter() - t0
            assert x.shape == arr.shape
            return t

        g = best(fget, reps * 4)
        row("get, per-object file (open + mmap + deserialize)", n, g, f"= {g[0] * 1e6:.0f} us")
        fstore.close()

        # Throughput for 1 MiB objects, arena warm.
        store = ShmStore(session)
        small = np.random.default_rng(2).random((1 << 20) // 8)
        ids = [i.to_bytes(20, "little") for i in range(64)]

        def many(i: int) -> float:
            for k in ids:
                store.delete(k)
            t0 = time.perf_counter()
            for k in ids:
                store.put_serialized(k, ser.serialize(small))
            return time.perf_counter() - t0

        many(0)
        row("put 64 x 1 MiB, arena warm", 64 << 20, best(many, reps))
        store.close()
    finally:
        cleanup_session(session)
        cleanup_session(session + "f")


# ------------------------------------------------------------- part C


def part_c(reps: int) -> None:
    print("C. small values")
    n = 20000 if reps > 3 else 5000

    def per_op(f: Callable[[], object]) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            f()
        return (time.perf_counter() - t0) / n

    cases = {
        "int": 42,
        "tuple (1, 'a', 2.0)": (1, "a", 2.0),
        "nested plain ((1,2), {'a': [1,2,(3,)]})": ((1, 2), {"a": [1, 2, (3,)]}),
        "bytes 1 KiB": b"x" * 1024,
        "numpy float64[100]": np.arange(100.0),
    }
    for name, v in cases.items():
        t = min(per_op(lambda v=v: ser.deserialize(ser.serialize(v).to_bytes())) for _ in range(3))
        print(f"  serialize + to_bytes + deserialize {name:<40} {t * 1e6:7.2f} us")
    session = new_session_name("benchs")
    try:
        store = ShmStore(session, capacity=64 << 20)
        oid = b"\x02" * 20
        payload = ser.serialize((1, "a", 2.0))

        def put_get_delete() -> None:
            store.put_serialized(oid, payload)
            ser.deserialize(store.get(oid))
            store.delete(oid)

        t = min(per_op(put_get_delete) for _ in range(3))
        print(f"  store put + get + deserialize + delete of a small object     {t * 1e6:7.2f} us ({1 / t:,.0f} /s)")
        store.put_serialized(oid, payload)
        t = min(per_op(lambda: store.get(oid)) for _ in range(3))
        print(f"  store get (view only) of a small object                      {t * 1e6:7.2f} us")
        t = min(per_op(lambda: store.contains(oid)) for _ in range(3))
        print(f"  store contains                                               {t * 1e6:7.2f} us")
        store.close()
    finally:
        cleanup_session(session)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--parts", default="abc")
    args = ap.parse_args()
    n = (32 << 20) if args.quick else (100 << 20)
    reps = 3 if args.quick else 7
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, {os.cpu_count()} cpus, kernel {os.uname().release}")
    try:
        with open("/sys/kernel/mm/transparent_hugepage/shmem_enabled") as f:
            print(f"shmem_enabled: {f.read().strip()}")
    except OSError:
        pass
    if "a" in args.parts:
        part_a(n, reps)
    if "b" in args.parts:
        part_b(n, reps)
    if "c" in args.parts:
        part_c(reps)


if __name__ == "__main__":
    main()
