"""Benchmark penumbra's wire layer and the sync-to-trio bridge.

Wire (server and relay run in child processes, so every number includes real
cross-process wake-ups, as in the runtime), over a Unix socket and over TCP
loopback:

* ping-pong round trips/s: one message per round trip (``send`` then
  ``receive``): the latency path;
* pipelined round trips/s: 64 requests kept in flight, replies batched: the
  throughput path of many small tasks;
* one-way messages/s with ``send_nowait`` batching, and messages per frame;

with ``--hops 2`` the client talks to an echo server through a relay process
(client -> relay -> echo and back), like driver -> node daemon -> worker.

Transports compared:

* ``raw``: what ``connect_*``/``serve_*`` use, a non-blocking stdlib socket
  driven with ``trio.lowlevel.wait_readable``/``wait_writable``;
* ``stream``: the same Channel over trio's ``SocketStream`` (via
  ``open_channel``/``accept_channel``), which yields on every operation.

Codec (in process, ``--only codec``): encode + decode of one message per
frame, per message type, pickle protocol 5 (what protocol 1 sent) against
the msgpack codec of :mod:`penumbra.transports.wire_codec` (protocol 2),
with the frame sizes; and a batch of 64 mixed messages.

Bridge (in process): ``TrioThread.call`` round trip for a trivial coroutine
and for one that blocks once, ``run_sync`` round trip, and the caller-side
cost of ``submit``.

Usage::

    python bench/bench_wire.py                 # everything
    python bench/bench_wire.py --quick         # 1 s per measurement
    python bench/bench_wire.py --kind unix --transport raw --hops 2
    python bench/bench_wire.py --only bridge
    python bench/bench_wire.py --only codec
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import trio
import trio.lowlevel

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from penumbra.core.ids import driver_task_id, return_object_id
from penumbra.core.messages import ObjectsReady
from penumbra.core.records import ObjectInfo
from penumbra.transports import wire
from penumbra.transports.bridge import TrioThread
from penumbra.transports.wire import Ping, Pong

_ROOT = driver_task_id(1)
TOKEN = "bench-token"
WINDOW = 64


def Small(task_id: int):
    """A small protocol message, as a node sends a client when a task's
    result is ready (a core message, so it travels as the protocol does:
    pickled under protocol 1, msgpack under 2)."""
    oid = return_object_id(_ROOT, task_id % 1000 + 1)
    return ObjectsReady(req_id=task_id, objects=((oid, ObjectInfo(8)),))


# --------------------------------------------------------------------- servers


async def echo_handler(ch: wire.Channel) -> None:
    """Ping(n) -> Pong(n); counts anything else; Ping(-1) -> Pong(count)."""
    count = 0
    while True:
        try:
            batch = await ch.receive_batch()
        except wire.ConnectionClosed:
            return
        for msg in batch:
            if type(msg) is Ping:
                if msg.seq >= 0:
                    ch.send_nowait(Pong(msg.seq))
                else:
                    ch.send_nowait(Pong(count))
                    count = 0
            else:
                count += 1
        ch.flush_nowait()  # replies go out now, as one frame


async def _pump(src: wire.Channel, dst: wire.Channel) -> None:
    try:
        while True:
            for msg in await src.receive_batch():
                try:
                    dst.send_nowait(msg)
                except trio.WouldBlock:
                    await dst.send(msg)
            dst.flush_nowait()
    except wire.ConnectionClosed:
        return


def relay_handler(upstream: str, kind: str):
    async def handler(ch: wire.Channel) -> None:
        up = await _connect(kind, "raw", upstream)
        async with up, trio.open_nursery() as nursery:
            nursery.start_soon(_pump, up, ch)
            await _pump(ch, up)
            nursery.cancel_scope.cancel()

    return handler


async def serve(kind: str, transport: str, address: str, upstream: str | None) -> None:
    handler = echo_handler if upstream is None else relay_handler(upstream, kind)
    async with trio.open_nursery() as nursery:
        if transport == "raw":
            if kind == "unix":
                where = await nursery.start(wire.serve_unix, address, handler, TOKEN)
            else:
                host, port = await nursery.start(wire.serve_tcp, "127.0.0.1", 0, handler, TOKEN)
                where = f"{host}:{port}"
        else:

            async def stream_handler(stream: trio.SocketStream) -> None:
                ch = await wire.accept_channel(stream, TOKEN)
                if ch is not None:
                    async with ch:
                        await handler(ch)

            if kind == "unix":
                lsock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
                await lsock.bind(address)
                lsock.listen(64)
                listeners = [trio.SocketListener(lsock)]
                where = address
            else:
                listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
                host, port = listeners[0].socket.getsockname()[:2]
                where = f"{host}:{port}"
            nursery.start_soon(trio.serve_listeners, stream_handler, listeners)
        print(f"READY {where}", flush=True)
        # Exit when the parent closes our stdin.
        await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------- client


async def _connect(kind: str, transport: str, where: str) -> wire.Channel:
    if transport == "raw":
        if kind == "unix":
            return await wire.connect_unix(where, TOKEN, "bench", "client")
        host, port = where.rsplit(":", 1)
        return await wire.connect_tcp(host, int(port), TOKEN, "bench", "client")
    if kind == "unix":
        stream = await trio.open_unix_socket(where)
    else:
        host, port = where.rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
    return await wire.open_channel(stream, TOKEN, "bench", "client")


class CpuMeter:
    """CPU seconds used by this process and the server processes.

    Wall-clock rates swing with the machine's load; CPU time per operation
    (all processes involved) is a steadier measure of what the code costs.
    """

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def __call__(self) -> float:
        total = time.process_time()
        for pid in self.pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / self.tick
            except OSError:  # no /proc (not Linux): client only
                pass
        return total


async def pingpong(ch: wire.Channel, seconds: float) -> tuple[float, float]:
    """Round trips/s and median round trip (us), one message per round trip."""
    for i in range(200):  # warm up
        await ch.send(Ping(i))
        await ch.receive()
    samples = []
    n = 0
    perf = time.perf_counter
    start = perf()
    deadline = start + seconds
    while True:
        t0 = perf()
        await ch.send(Ping(n))
        reply = await ch.receive()
        t1 = perf()
        assert reply.seq == n
        samples.append(t1 - t0)
        n += 1
        if t1 >= deadline:
            break
    return n / (perf() - start), statistics.median(samples) * 1e6


async def pipelined(ch: wire.Channel, seconds: float, window: int = WINDOW) -> float:
    """Round trips/s with ``window`` requests in flight."""
    sent = done = 0
    for _ in range(window):
        ch.send_nowait(Ping(sent))
        sent += 1
    ch.flush_nowait()
    start = time.perf_counter()
    deadline = start + seconds
    stop = False
    while done < sent:
        batch = await ch.receive_batch()
        done += len(batch)
        if not stop:
            for _ in batch:
                ch.send_nowait(Ping(sent))
                sent += 1
            ch.flush_nowait()
            stop = time.perf_counter() >= deadline
    return done / (time.perf_counter() - start)


async def throughput(ch: wire.Channel, seconds: float, chunk: int) -> tuple[float, float]:
    """One-way messages/s with send_nowait batching; and messages per frame."""
    total = 0
    frames0 = ch.frames_sent
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for i in range(chunk):
            try:
                ch.send_nowait(Small(i))
            except trio.WouldBlock:
                await ch.send(Small(i))
        total += chunk
        await trio.lowlevel.checkpoint()  # let the flusher run: one frame per chunk
    await ch.send(Ping(-1))
    reply = await ch.receive()
    elapsed = time.perf_counter() - start
    assert reply.seq == total, (reply.seq, total)
    frames = ch.frames_sent - frames0
    return total / elapsed, total / max(frames, 1)


async def run_client(kind: str, transport: str, where: str, seconds: float, pids: list[int]) -> dict[str, float]:
    cpu = CpuMeter(pids)
    ch = await _connect(kind, transport, where)
    async with ch:
        c0, t0 = cpu(), time.perf_counter()
        rts, median = await pingpong(ch, seconds)
        out = {"rt": rts, "median": median}
        out["rt_cpu"] = (cpu() - c0) / (rts * (time.perf_counter() - t0)) * 1e6
        c0, t0 = cpu(), time.perf_counter()
        out["pipelined"] = await pipelined(ch, seconds)
        out["pipelined_cpu"] = (cpu() - c0) / (out["pipelined"] * (time.perf_counter() - t0)) * 1e6
        c0, t0 = cpu(), time.perf_counter()
        out["mps"], out["per_frame"] = await throughput(ch, seconds, 1000)
        out["mps_cpu"] = (cpu() - c0) / (out["mps"] * (time.perf_counter() - t0)) * 1e6
    return out


class _Server:
    def __init__(self, kind: str, transport: str, address: str, upstream: str | None = None) -> None:
        cmd = [sys.executable, os.path.abspath(__file__), "--serve", "--kind", kind]
        cmd += ["--transport", transport, "--address", address]
        if upstream:
            cmd += ["--upstream", upstream]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("READY "):
            self.close()
            raise RuntimeError(f"server did not start: {line!r}")
        self.where = line.split(" ", 1)[1]

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def bench_wire(kind: str, transport: str, hops: int, seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        servers = [_Server(kind, transport if hops == 1 else "raw", os.path.join(tmp, "echo.sock"))]
        try:
            if hops == 2:
                servers.append(_Server(kind, transport, os.path.join(tmp, "relay.sock"), servers[0].where))
            pids = [srv.proc.pid for srv in servers]
            return trio.run(run_client, kind, transport, servers[-1].where, seconds, pids)
        finally:
            for s in reversed(servers):
                s.close()


# --------------------------------------------------------------------- bridge


def bench_bridge(seconds: float) -> dict[str, float]:
    async def trivial(x):
        return x

    async def blocks_once():
        await trio.lowlevel.checkpoint()

    out = {}
    with TrioThread(name="bench") as tt:
        for label, fn, args in [("call trivial", trivial, (1,)), ("call blocking once", blocks_once, ())]:
            for _ in range(500):
                tt.call(fn, *args)
            n = 0
            start = time.perf_counter()
            deadline = start + seconds
            while time.perf_counter() < deadline:
                for _ in range(100):
                    tt.call(fn, *args)
                n += 100
            out[label] = (time.perf_counter() - start) / n * 1e6
        n = 0
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            for _ in range(100):
                tt.run_sync(len, ())
            n += 100
        out["run_sync"] = (time.perf_counter() - start) / n * 1e6
        # submit: caller-side cost, then end-to-end (until all have run)
        counter = [0]

        def bump():
            counter[0] += 1

        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(100_000):
                tt.submit(bump)
            best = min(best, (time.perf_counter() - t0) / 100_000 * 1e6)
            tt.run_sync(len, ())
        out["submit (caller)"] = best
        t0 = time.perf_counter()
        for _ in range(100_000):
            tt.submit(bump)
        tt.run_sync(len, ())
        out["submit (end to end)"] = (time.perf_counter() - t0) / 100_000 * 1e6
    # For reference: trio's own thread bridge.
    with TrioThread(name="bench-ref") as tt:
        token = tt.trio_token
        n = 0
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            for _ in range(100):
                trio.from_thread.run(trivial, 1, trio_token=token)
            n += 100
        out["trio.from_thread.run (reference)"] = (time.perf_counter() - start) / n * 1e6
    return out


# ----------------------------------------------------------------------- codec


def codec_messages() -> dict[str, object]:
    """One representative message of each kind on a task's path."""
    from penumbra.core import messages as M
    from penumbra.core import tables_ops as T
    from penumbra.core.ids import ActorId, child_task_id, driver_task_id, return_object_id
    from penumbra.core.records import NodeLoad, ObjectInfo
    from penumbra.core.specs import FunctionDescriptor, Payload, ResourceSet, TaskSpec
    from penumbra.transports import protocol as P

    root = driver_task_id(1)
    tid = child_task_id(root, 7)
    oid = return_object_id(tid, 1)
    fn = FunctionDescriptor(b"\x01" * 16, "__main__.plus_one")
    spec = TaskSpec(task_id=tid, job_id=1, parent_task_id=root, function=fn, args=Payload(24, b"\x80" * 24),
                    resources=ResourceSet.of(CPU=1))
    aspec = TaskSpec(task_id=tid, job_id=1, parent_task_id=root, function=fn, args=Payload(24, b"\x80" * 24),
                     actor_id=ActorId(b"\x02" * 16), caller_id="driver-1", sequence_no=12, method="get")
    cpu = ResourceSet.of(CPU=2)
    return {
        "Deliver(SubmitTask)": P.Deliver(to="node:n1", msg=M.SubmitTask(client="driver-1", spec=spec), src="driver-1"),
        "Execute": M.Execute(worker_id="w-3", spec=spec, attempt=0),
        "Run": P.Run(spec=spec, attempt=0, args=()),
        "Ran": P.Ran(task_id=tid, outputs=((oid, 5, b"\x80\x05K\x02."),), duration=1e-4, ended=12.5),
        "TaskFinished": M.TaskFinished(worker_id="w-3", task_id=tid, outputs=((oid, 5),), duration=1e-4),
        "ObjectsReady": M.ObjectsReady(req_id=3, objects=((oid, ObjectInfo(5)),)),
        "Deliver(ObjectsReady)+value": P.Deliver(to="driver-1", msg=M.ObjectsReady(req_id=3, objects=((oid, ObjectInfo(5)),)),
                                                 attachments={oid: ("i", b"\x80\x05K\x02.")}),
        "WatchObjects": M.WatchObjects(client="driver-1", req_id=3, object_ids=(oid,), fetch=True, need=1),
        "ActorCall": M.ActorCall(spec=aspec, from_node="n1", incarnation=0, floor=11, attempt=0),
        "ActorCallDone": M.ActorCallDone(actor_id=ActorId(b"\x02" * 16), caller_id="driver-1", sequence_nos=(12,),
                                         incarnation=0),
        "GcsWrite(AddTask)": M.GcsWrite(client="node:n1", req_id=9, op=T.AddTask(spec, "n1", True), shard=0),
        "GcsReply(None)": M.GcsReply(req_id=9, result=None),
        "Heartbeat": M.Heartbeat(node_id="n1", load=NodeLoad(0, 1, cpu, cpu, 1e-3, 0, 1 << 30, 2), seq=5),
        "Ping": Ping(1),
    }


def bench_codec(seconds: float) -> None:
    """Encode + decode per message type: pickle 5 (protocol 1) vs the msgpack codec."""
    import pickle

    from penumbra.transports.wire_codec import codec

    c = codec()

    def per_op(fn) -> float:
        n = 200
        while True:
            t0 = time.process_time()
            for _ in range(n):
                fn()
            dt = time.process_time() - t0
            if dt > seconds / 10:
                break
            n *= 4
        best = dt / n
        for _ in range(3):
            t0 = time.process_time()
            for _ in range(n):
                fn()
            best = min(best, (time.process_time() - t0) / n)
        return best * 1e6

    print("(CPU microseconds per frame of one message: encode, decode, both; frame body bytes)")
    print(f"{'message':28} {'pickle enc':>10} {'dec':>6} {'sum':>6} {'bytes':>6} | "
          f"{'msgpack enc':>11} {'dec':>6} {'sum':>6} {'bytes':>6} | {'speedup':>7}")
    msgs = codec_messages()
    for name, m in msgs.items():
        batch = [m]
        pb = pickle.dumps(batch, 5)
        mb = c.encode(batch)
        body = memoryview(mb)[4:]
        assert c.decode(body) == batch and pickle.loads(pb) == batch
        pe = per_op(lambda: pickle.dumps(batch, 5))
        pd = per_op(lambda: pickle.loads(pb))
        me = per_op(lambda: c.encode(batch))
        md = per_op(lambda: c.decode(body))
        print(f"{name:28} {pe:10.2f} {pd:6.2f} {pe + pd:6.2f} {len(pb):6d} | {me:11.2f} {md:6.2f} {me + md:6.2f} "
              f"{len(body):6d} | {(pe + pd) / (me + md):6.1f}x", flush=True)
    # distinct objects (as in a real batch: a repeated object would only be
    # a memo reference to pickle), each message kind 5 times
    batch = [pickle.loads(pickle.dumps(m, 5)) for _ in range(5) for m in msgs.values()]
    pb = pickle.dumps(batch, 5)
    body = memoryview(c.encode(batch))[4:]
    pe, pd = per_op(lambda: pickle.dumps(batch, 5)), per_op(lambda: pickle.loads(pb))
    me, md = per_op(lambda: c.encode(batch)), per_op(lambda: c.decode(body))
    k = len(batch)
    print(f"{'batch of ' + str(k) + ' (per message)':28} {pe / k:10.2f} {pd / k:6.2f} {(pe + pd) / k:6.2f} "
          f"{len(pb) // k:6d} | {me / k:11.2f} {md / k:6.2f} {(me + md) / k:6.2f} {len(body) // k:6d} | "
          f"{(pe + pd) / (me + md):6.1f}x")


# ----------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", choices=["unix", "tcp", "all"], default="all")
    p.add_argument("--transport", choices=["raw", "stream", "all"], default="all")
    p.add_argument("--hops", choices=["1", "2", "all"], default="all")
    p.add_argument("--only", choices=["wire", "bridge", "codec", "all"], default="all")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--quick", action="store_true", help="1 s per measurement")
    p.add_argument(
        "--repeat", type=int, default=1, help="run each wire case N times, report the best (for a shared machine)"
    )
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--address", help=argparse.SUPPRESS)
    p.add_argument("--upstream", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        trio.run(serve, args.kind, args.transport, args.address, args.upstream)
        return
    seconds = 1.0 if args.quick else args.seconds
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"python {sys.version.split()[0]}, trio {trio.__version__}, {os.cpu_count()} CPUs, "
        f"load {load:.2f}, {seconds:g} s per measurement"
    )
    if args.only in ("wire", "all"):
        kinds = ["unix", "tcp"] if args.kind == "all" else [args.kind]
        transports = ["raw", "stream"] if args.transport == "all" else [args.transport]
        hops = [1, 2] if args.hops == "all" else [int(args.hops)]
        print("(cpu = CPU microseconds per operation, summed over all processes involved)")
        print(
            f"{'kind':5} {'transport':9} {'hops':>4} {'pingpong rt/s':>13} {'median us':>9} {'cpu':>6} "
            f"{'pipelined rt/s':>14} {'cpu':>6} {'one-way msg/s':>13} {'cpu':>5} {'msg/frame':>9}"
        )
        for kind in kinds:
            for transport in transports:
                for h in hops:
                    runs = [bench_wire(kind, transport, h, seconds) for _ in range(args.repeat)]
                    r = {k: (min if k.endswith("cpu") or k == "median" else max)(x[k] for x in runs) for k in runs[0]}
                    print(
                        f"{kind:5} {transport:9} {h:4d} {r['rt']:13.0f} {r['median']:9.1f} {r['rt_cpu']:6.1f} "
                        f"{r['pipelined']:14.0f} {r['pipelined_cpu']:6.1f} "
                        f"{r['mps']:13.0f} {r['mps_cpu']:5.2f} {r['per_frame']:9.1f}",
                        flush=True,
                    )
    if args.only in ("codec", "all"):
        bench_codec(seconds)
    if args.only in ("bridge", "all"):
        for label, us in bench_bridge(seconds).items():
            print(f"bridge {label:34} {us:8.2f} us")


if __name__ == "__main__":
    main()
