"""penumbra.transports.shm_store: the per-node shared-memory object store.

Every test uses its own session name and removes every file of it from
/dev/shm, also when it fails (the ``session`` fixture).
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import random
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pyarrow as pa
import pytest

from penumbra.transports import shm_store as shm
from penumbra.transports.serialization import deserialize, serialize
from penumbra.transports.shm_store import (
    ROOT,
    ObjectExistsError,
    ObjectNotFoundError,
    ShmSpaceError,
    ShmStore,
    StoreError,
    StoreFullError,
    cleanup_session,
    new_session_name,
    session_segments,
    session_store,
    stale_sessions,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 1 << 20


def oid(n: int) -> bytes:
    return n.to_bytes(4, "big") * 5


@pytest.fixture
def session():
    """A unique session name whose files are all gone after the test."""
    name = new_session_name("t")
    try:
        yield name
    finally:
        cleanup_session(name)
        assert session_segments(name) == []


@pytest.fixture
def store(session):
    st = ShmStore(session, capacity=32 * MiB, max_objects=1024)
    try:
        yield st
    finally:
        st.close()


def run_child(code: str, *args: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run Python code in a fresh interpreter (a real separate process)."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert proc.returncode == 0, f"child failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def arena_array(st: ShmStore) -> np.ndarray:
    return np.frombuffer(st._arena, dtype=np.uint8)


# ------------------------------------------------------------------ basics


def test_create_seal_get_delete(store):
    view = store.create(oid(1), 100)
    assert not view.readonly and len(view) == 100
    view[:] = bytes(range(100))
    assert not store.contains(oid(1))  # invisible until sealed
    with pytest.raises(ObjectNotFoundError, match="not sealed"):
        store.get(oid(1))
    store.seal(oid(1))
    del view
    assert store.contains(oid(1)) and oid(1) in store
    assert store.size_of(oid(1)) == 100
    got = store.get(oid(1))
    assert got.readonly and bytes(got) == bytes(range(100))
    with pytest.raises(TypeError):
        got[0] = 1
    assert store.object_ids() == [oid(1)]
    assert store.delete(oid(1)) is True
    assert store.delete(oid(1)) is False
    assert not store.contains(oid(1))
    with pytest.raises(KeyError):  # ObjectNotFoundError is a KeyError
        store.get(oid(1))
    with pytest.raises(ObjectNotFoundError):
        store.size_of(oid(1))


def test_create_errors(store):
    store.put_bytes(oid(1), b"abc")
    with pytest.raises(ObjectExistsError):
        store.create(oid(1), 10)
    with pytest.raises(StoreError, match="already sealed"):
        store.seal(oid(1))
    with pytest.raises(ObjectNotFoundError):
        store.seal(oid(2))
    with pytest.raises(ValueError, match="20 bytes"):
        store.create(b"short", 10)
    with pytest.raises(TypeError):
        store.create("a string id of twenty", 10)
    with pytest.raises(ValueError):
        store.create(oid(3), -1)


def test_abort_and_zero_size(store):
    v = store.create(oid(1), 1000)
    del v
    store.abort(oid(1))
    assert not store.contains(oid(1))
    assert store.stats()["used"] == 0
    store.put_bytes(oid(2), b"")
    assert store.size_of(oid(2)) == 0 and bytes(store.get(oid(2))) == b""


def test_put_serialized_numpy_zero_copy(store):
    arr = np.random.default_rng(0).random((100, 1000))
    size = store.put_serialized(oid(1), serialize(arr))
    assert size == store.size_of(oid(1))
    back = deserialize(store.get(oid(1)))
    np.testing.assert_array_equal(back, arr)
    assert np.shares_memory(back, arena_array(store)), "get must not copy"
    assert back.ctypes.data % 64 == 0
    assert not back.flags.writeable
    with pytest.raises(ValueError, match="assignment destination is read-only"):
        back[0, 0] = 1.0


def test_put_serialized_arrow_zero_copy(store):
    t = pa.table({"x": np.arange(100_000), "s": [str(i) for i in range(100_000)]})
    store.put_serialized(oid(1), serialize(t))
    back = deserialize(store.get(oid(1)))
    assert back.equals(t)
    buf = back.column("x").chunk(0).buffers()[1]
    base = arena_array(store).ctypes.data
    assert base <= buf.address < base + store.stats()["capacity"]


def test_region_reused_when_no_views(store):
    arr = np.ones(MiB, dtype=np.uint8)
    store.put_serialized(oid(1), serialize(arr))
    used = store.stats()["used"]
    first = deserialize(store.get(oid(1))).ctypes.data
    store.delete(oid(1))  # the temporary above is gone: nothing pins it
    assert store.stats()["zombies"] == 0 and store.stats()["used"] == 0
    store.put_serialized(oid(2), serialize(arr * 2))
    assert store.stats()["used"] == used
    assert deserialize(store.get(oid(2))).ctypes.data == first  # same pages, reused


def test_view_survives_delete_and_reuse(store):
    a = np.full(MiB, 7, dtype=np.uint8)
    store.put_serialized(oid(1), serialize(a))
    back = deserialize(store.get(oid(1)))
    store.delete(oid(1))
    assert not store.contains(oid(1))
    st = store.stats()
    assert st["zombies"] == 1 and st["zombie_bytes"] > 0
    # New objects must not land on the pinned region.
    for i in range(2, 10):
        store.put_serialized(oid(i), serialize(np.full(MiB, i, dtype=np.uint8)))
    assert (back == 7).all()
    assert store.reap() == 0  # still pinned
    del back
    assert store.reap() > 0
    assert store.stats()["zombies"] == 0


def test_derived_views_keep_pin(store):
    store.put_bytes(oid(1), b"x" * 4096)
    view = store.get(oid(1))
    part = view[100:200]
    arr = np.frombuffer(view, dtype=np.uint8)
    del view
    store.delete(oid(1))
    assert store.stats()["zombies"] == 1
    del part
    assert store.reap() == 0  # arr still holds it
    assert (arr == ord("x")).all()
    del arr
    assert store.reap() == 4096


def test_create_view_pins_until_dropped(store):
    v = store.create(oid(1), 1000)
    store.seal(oid(1))
    store.delete(oid(1))
    assert store.stats()["zombies"] == 1
    del v
    store.reap()
    assert store.stats()["zombies"] == 0 and store.stats()["used"] == 0


def test_stats_and_object_ids(store):
    for i in range(5):
        store.put_bytes(oid(i), b"a" * (i * 100))
    store.create(oid(99), 10)
    s = store.stats()
    assert s["objects"] == 6 and s["capacity"] == 32 * MiB
    assert sorted(store.object_ids()) == sorted(oid(i) for i in range(5))
    assert len(store.object_ids(sealed_only=False)) == 6
    assert s["used"] + s["free"] == s["capacity"]


# -------------------------------------------------------- allocator model


def test_allocator_against_model(session):
    """Random creates/deletes: live regions never overlap, accounting holds,
    and freeing everything coalesces back to one extent."""
    rng = random.Random(1234)
    cap = 4 * MiB
    with ShmStore(session, capacity=cap, max_objects=512, spill_to_files=False) as st:
        live: dict[bytes, tuple[int, int]] = {}
        for step in range(1500):
            if live and (rng.random() < 0.45 or len(live) > 300):
                k = rng.choice(sorted(live))
                assert st.delete(k)
                del live[k]
            else:
                k = oid(step)
                size = rng.choice([1, 63, 64, 65, 500, 4096, rng.randrange(1, 200_000)])
                try:
                    v = st.create(k, size)
                except StoreFullError:
                    continue
                start = np.frombuffer(v, dtype=np.uint8).ctypes.data - arena_array(st).ctypes.data
                v[:1] = b"\x01"
                del v
                st.seal(k)
                live[k] = (start, size)
            regions = sorted(live.values())
            for (a, n), (b, _) in zip(regions, regions[1:]):
                assert a + max(n, 1) <= b, "overlapping regions"
            assert st.stats()["objects"] == len(live)
            assert st.stats()["used"] == sum(max(64, (n + 63) // 64 * 64) for _, n in live.values())
        for k in list(live):
            st.delete(k)
        s = st.stats()
        assert s["used"] == 0 and s["largest_free"] == cap and s["zombies"] == 0


def test_table_full(session):
    with ShmStore(session, capacity=MiB, max_objects=16) as st:
        n = 0
        with pytest.raises(StoreFullError, match="object table is full"):
            while True:
                st.put_bytes(oid(n), b"x")
                n += 1
        assert n == 13  # 85% of 16 slots
        for i in range(n):
            assert st.get(oid(i)) == b"x"
        st.delete(oid(0))
        st.put_bytes(oid(100), b"y")


# ------------------------------------------------------------- spilling


def test_spill_to_file_when_too_big(store, session):
    big = np.arange(6 * MiB, dtype=np.int64)  # 48 MiB > the 32 MiB arena
    store.put_serialized(oid(1), serialize(big))
    files = [p for p in session_segments(session) if "-obj-" in p]
    assert files == [os.path.join(ROOT, f"penumbra-{session}-obj-{oid(1).hex()}")]
    assert store.stats()["file_bytes"] > 0
    back = deserialize(store.get(oid(1)))
    np.testing.assert_array_equal(back, big)
    assert not back.flags.writeable
    store.delete(oid(1))
    assert [p for p in session_segments(session) if "-obj-" in p] == []
    assert back[-1] == big[-1]  # the mapping outlives the unlinked file


def test_no_spill_raises_store_full(session):
    with ShmStore(session, capacity=MiB, spill_to_files=False) as st:
        st.put_bytes(oid(1), b"x" * (MiB // 2))
        with pytest.raises(StoreFullError, match="no room"):
            st.put_bytes(oid(2), b"x" * (MiB // 2 + 1))
        assert not st.contains(oid(2))
        with pytest.raises(StoreFullError):
            st.create(oid(3), 2 * MiB)


def test_zombies_are_reaped_before_spilling(session):
    with ShmStore(session, capacity=MiB, spill_to_files=False) as st:
        st.put_bytes(oid(1), b"x" * (MiB // 2))
        view = st.get(oid(1))
        st.delete(oid(1))
        with pytest.raises(StoreFullError):
            st.put_bytes(oid(2), b"y" * (MiB * 3 // 4))
        del view
        st.put_bytes(oid(2), b"y" * (MiB * 3 // 4))  # reaped on the way
        assert st.stats()["zombies"] == 0


def test_file_only_store(session):
    with ShmStore(session, capacity=0) as st:
        arr = np.arange(1000.0)
        st.put_serialized(oid(1), serialize(arr))
        np.testing.assert_array_equal(deserialize(st.get(oid(1))), arr)
        assert st.stats()["capacity"] == 0


# ------------------------------------------------------- out of space


def test_enospc_from_fallocate_is_clean(session, monkeypatch):
    with ShmStore(session, capacity=64 * MiB) as st:
        real = os.posix_fallocate

        def no_space(fd, offset, length):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(shm.os, "posix_fallocate", no_space)
        with pytest.raises(ShmSpaceError, match="out of shared memory") as info:
            st.put_bytes(oid(1), b"x" * MiB)  # arena commit fails
        assert info.value.errno == errno.ENOSPC
        assert isinstance(info.value, StoreFullError)
        assert not st.contains(oid(1)) and st.stats()["used"] == 0
        with pytest.raises(ShmSpaceError):
            st.create(oid(2), 100 * MiB)  # spilled file: fallocate fails too
        assert [p for p in session_segments(session) if "-obj-" in p] == []
        monkeypatch.setattr(shm.os, "posix_fallocate", real)
        st.put_bytes(oid(1), b"x" * MiB)  # and the store still works
        assert st.size_of(oid(1)) == MiB


def test_real_efbig_in_child(session):
    """A real kernel refusal: RLIMIT_FSIZE makes fallocate fail with EFBIG."""
    ShmStore(session, capacity=0).close()
    proc = run_child(
        """
        import resource, signal, sys
        from penumbra.transports.shm_store import ShmStore, ShmSpaceError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        st = ShmStore(sys.argv[1])
        try:
            st.create(b"z" * 20, 8 << 20)
        except ShmSpaceError as e:
            print("ShmSpaceError", e.errno)
        print("contains", st.contains(b"z" * 20))
        """,
        session,
    )
    assert f"ShmSpaceError {errno.EFBIG}" in proc.stdout
    assert "contains False" in proc.stdout
    assert [p for p in session_segments(session) if "-obj-" in p] == []


def test_unusable_root(session, tmp_path):
    missing = str(tmp_path / "does-not-exist")
    with pytest.raises(OSError):
        ShmStore(session, missing, capacity=MiB)
    assert not os.path.exists(missing)


def test_attach_missing_and_create_twice(session):
    with pytest.raises(shm.StoreNotFoundError, match="no object store"):
        ShmStore(session)
    with ShmStore(session, capacity=MiB):
        with pytest.raises(FileExistsError, match="already exists"):
            ShmStore(session, capacity=MiB)
        with ShmStore(session) as other:
            assert other.stats()["capacity"] == MiB


def test_bad_session_names():
    for bad in ["", "a-b", "a/b", "x" * 101, None]:
        with pytest.raises(ValueError):
            ShmStore(bad, capacity=MiB)  # type: ignore[arg-type]


# ------------------------------------------------------- cleanup


def test_cleanup_removes_everything(session):
    st = ShmStore(session, capacity=4 * MiB)
    st.put_bytes(oid(1), b"a")
    st.put_bytes(oid(2), b"b" * (8 * MiB))  # spilled
    view = st.get(oid(2))
    assert len(session_segments(session)) == 3
    assert st.cleanup() == 3
    assert session_segments(session) == []
    assert view[:1] == b"b"  # views survive cleanup
    with pytest.raises(StoreError, match="closed"):
        st.get(oid(1))
    assert cleanup_session(session) == 0


def test_session_store_cleans_up_on_error():
    holder = {}
    with pytest.raises(RuntimeError), session_store(capacity=MiB) as st:
        holder["s"] = st.session
        st.put_bytes(oid(1), b"x")
        assert session_segments(st.session)
        raise RuntimeError("test body failed")
    assert session_segments(holder["s"]) == []


def test_close_keeps_views_valid(session):
    with ShmStore(session, capacity=MiB) as st:
        st.put_bytes(oid(1), b"q" * 1000)
        view = st.get(oid(1))
    assert bytes(view[:3]) == b"qqq"
    del view


def test_stale_sessions_after_creator_dies(session):
    run_child(
        """
        import sys
        from penumbra.transports.shm_store import ShmStore
        st = ShmStore(sys.argv[1], capacity=1 << 20)
        st.put_bytes(b"k" * 20, b"left behind")
        # exits without cleanup, like a crashed daemon
        """,
        session,
    )
    assert session_segments(session)
    assert session in stale_sessions()
    cleanup_session(session)
    assert session not in stale_sessions()


# -------------------------------------------------- other processes


def test_cross_process_read_zero_copy(session):
    with ShmStore(session, capacity=64 * MiB) as st:
        arr = np.random.default_rng(5).random((512, 1024))
        st.put_serialized(oid(1), serialize({"arr": arr, "meta": "hello"}))
        proc = run_child(
            """
            import sys, numpy as np
            from penumbra.transports.shm_store import ShmStore
            from penumbra.transports.serialization import deserialize, serialize
            st = ShmStore(sys.argv[1])
            v = deserialize(st.get((1).to_bytes(4, "big") * 5))
            a = v["arr"]
            print("meta", v["meta"])
            print("sum", repr(float(a.sum())))
            print("zero_copy", np.shares_memory(a, np.frombuffer(st._arena, dtype=np.uint8)))
            print("writeable", a.flags.writeable)
            st.put_serialized((2).to_bytes(4, "big") * 5, serialize(a * 2))
            """,
            session,
        )
        out = proc.stdout
        assert "meta hello" in out
        assert f"sum {float(arr.sum())!r}" in out
        assert "zero_copy True" in out and "writeable False" in out
        np.testing.assert_array_equal(deserialize(st.get(oid(2))), arr * 2)


def test_reader_in_other_process_pins_until_it_exits(session):
    with ShmStore(session, capacity=8 * MiB, spill_to_files=False) as st:
        st.put_bytes(oid(1), b"\x05" * (4 * MiB))
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                textwrap.dedent(
                    """
                    import sys
                    import numpy as np
                    from penumbra.transports.shm_store import ShmStore
                    st = ShmStore(sys.argv[1])
                    a = np.frombuffer(st.get((1).to_bytes(4, "big") * 5), dtype=np.uint8)
                    print("holding", flush=True)
                    sys.stdin.readline()          # parent deletes and overwrites
                    print("intact", bool((a == 5).all()), flush=True)
                    sys.stdin.readline()
                    """
                ),
                session,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONPATH=REPO),
        )
        try:
            assert child.stdout.readline().strip() == "holding"
            st.delete(oid(1))
            assert st.stats()["zombies"] == 1  # the child's lock pins it
            assert st.reap() == 0
            st.put_bytes(oid(2), b"\x09" * (4 * MiB))  # must go elsewhere
            with pytest.raises(StoreFullError):
                st.put_bytes(oid(3), b"\x09" * (4 * MiB))
            child.stdin.write("go\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "intact True"
            child.stdin.write("exit\n")
            child.stdin.flush()
            assert child.wait(timeout=30) == 0
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        # The kernel dropped the dead child's locks: the region comes back.
        assert st.reap() == 4 * MiB
        st.put_bytes(oid(3), b"\x09" * (4 * MiB))


def test_abandoned_create_reclaimed(session):
    with ShmStore(session, capacity=4 * MiB) as st:
        run_child(
            """
            import os, sys
            from penumbra.transports.shm_store import ShmStore
            st = ShmStore(sys.argv[1])
            v = st.create(b"u" * 20, 1 << 20)
            v[:5] = b"hello"
            os._exit(0)   # dies before seal
            """,
            session,
        )
        assert not st.contains(b"u" * 20)
        assert st.stats()["used"] == MiB
        assert st.reap() == MiB
        assert st.stats()["used"] == 0
        st.put_bytes(b"u" * 20, b"new")  # the id is free again


def _child_put(session: str, start: int, count: int) -> None:
    st = ShmStore(session)
    for i in range(start, start + count):
        st.put_serialized(oid(i), serialize(np.full(1000, i, dtype=np.int64)))
        if i % 3 == 0:
            st.delete(oid(i))
    st.close()


def test_concurrent_processes_and_threads(session):
    with ShmStore(session, capacity=64 * MiB) as st:
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=_child_put, args=(session, k * 1000, 150)) for k in range(2)]
        for p in procs:
            p.start()
        errors = []

        def thread_work(start):
            try:
                for i in range(start, start + 150):
                    st.put_serialized(oid(i), serialize(np.full(1000, i, dtype=np.int64)))
                    assert deserialize(st.get(oid(i)))[0] == i
                    if i % 3 == 0:
                        st.delete(oid(i))
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=thread_work, args=(s,)) for s in (5000, 6000)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        assert not errors, errors
        expected = [i for s in (0, 1000, 5000, 6000) for i in range(s, s + 150) if i % 3]
        assert sorted(st.object_ids()) == sorted(oid(i) for i in expected)
        for i in expected:
            assert (deserialize(st.get(oid(i))) == i).all()


def _forked_child(st: ShmStore, q) -> None:
    arr = deserialize(st.get(oid(1)))
    st.put_bytes(oid(2), b"from child")
    q.put(int(arr.sum()))


def test_fork_reopens_store(session):
    with ShmStore(session, capacity=4 * MiB) as st:
        st.put_serialized(oid(1), serialize(np.arange(100)))
        held = st.get(oid(1))
        ctx = multiprocessing.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=_forked_child, args=(st, q))
        p.start()
        assert q.get(timeout=30) == sum(range(100))
        p.join(30)
        assert p.exitcode == 0
        assert bytes(st.get(oid(2))) == b"from child"
        # The parent's pin survived the child's exit.
        st.delete(oid(1))
        assert st.stats()["zombies"] == 1
        del held
        assert st.reap() > 0


def test_prefault_and_reserve(session):
    with ShmStore(session, capacity=8 * MiB, prefault=True) as st:
        assert st.stats()["committed"] == 8 * MiB
    cleanup_session(session)
    with ShmStore(session, capacity=40 * MiB) as st:
        assert st.stats()["committed"] == 0
        assert st.reserve(MiB) == 16 * MiB  # commits in 16 MiB steps
        st.put_bytes(oid(1), b"x" * (20 * MiB))
        assert st.stats()["committed"] == 32 * MiB
        assert st.reserve() == 40 * MiB


def test_delete_between_create_and_seal(session):
    with ShmStore(session, capacity=MiB) as st, ShmStore(session) as other:
        v = st.create(oid(1), 2 * MiB)  # spilled to a file
        v[:3] = b"abc"
        assert other.delete(oid(1))
        with pytest.raises(ObjectNotFoundError, match="deleted before seal"):
            st.seal(oid(1))
        assert bytes(v[:3]) == b"abc"  # the creator's view is still valid
        assert [p for p in session_segments(session) if "-obj-" in p] == []
        v2 = st.create(oid(2), 1000)  # in the arena: zombie until v2 dies
        assert other.delete(oid(2))
        assert other.stats()["zombies"] == 1
        del v2
        assert other.reap() == 1024


def test_delete_never_fails_on_a_full_table(session):
    with ShmStore(session, capacity=MiB, max_objects=16) as st:
        views = []
        for i in range(13):
            st.put_bytes(oid(i), b"x")
            views.append(st.get(oid(i)))
        for i in range(13):  # every region is pinned: 13 zombies
            assert st.delete(oid(i))
        assert st.stats()["zombies"] == 13
        del views
        assert st.reap() == 13 * 64


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_pins_deletes_and_reaps_against_model(session, seed):
    """Random puts, held views, deletes, dropped views and reaps: a held
    view never changes, and all memory comes back at the end."""
    rng = random.Random(seed)
    cap = 2 * MiB
    with ShmStore(session, capacity=cap, max_objects=256, spill_to_files=False) as st:
        live: dict[bytes, int] = {}  # id -> fill byte
        held: list[tuple[memoryview, int]] = []
        for step in range(800):
            op = rng.random()
            if op < 0.4:
                k, fill, size = oid(step), step % 251, rng.choice([1, 64, 100, 5000, rng.randrange(1, 60_000)])
                try:
                    st.put_bytes(k, bytes([fill]) * size)
                except StoreFullError:
                    continue
                live[k] = fill
            elif op < 0.6 and live:
                k = rng.choice(sorted(live))
                held.append((st.get(k), live[k]))
            elif op < 0.8 and live:
                k = rng.choice(sorted(live))
                assert st.delete(k)
                del live[k]
            elif op < 0.95 and held:
                held.pop(rng.randrange(len(held)))
            else:
                st.reap()
            for view, fill in held:
                assert view[0] == fill and view[-1] == fill
            s = st.stats()
            assert s["objects"] == len(live)
            assert s["used"] + s["free"] == cap
        for k in list(live):
            st.delete(k)
        held.clear()
        view = None  # the loop variable above held the last view
        st.reap()
        s = st.stats()
        assert s == {**s, "used": 0, "zombies": 0, "objects": 0, "largest_free": cap}
