"""Fuzz a LIVE daemon's listeners with Hypothesis-drawn bytes (issue 12).

A real head daemon (``spawn_daemon``, as ``init()`` starts one) is fed
byte streams before authentication (garbage, hellos with odd tokens and
lone surrogates, deep nesting, wild length prefixes) and, after a correct
hello, frames with random bodies (a frame body must be a format byte and a
msgpack list of the protocol's messages, so these just end that
connection: random bytes, junk lists, a real message name with junk fields,
a pickle as protocol 1 sent) -- over TCP and over its Unix socket.  After
every batch the daemon is alive, still completes a fresh handshake, and
still runs a task for a driver connected to it.

Deterministic: Hypothesis is derandomized (see conftest.py) with small
``max_examples``; every connection waits until the daemon closes it, so a
batch has been handled before the checks run.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import struct

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import penumbra as ray
from penumbra.transports.wire import PROTOCOL_VERSION
from penumbra.transports.wire_codec import schema_fingerprint, wire_classes
from penumbra.transports.launch import DaemonProcess, spawn_daemon

pytestmark = pytest.mark.timeout(240)

SURROGATES = ["\ud800", "\udbff", "\udc00", "\udfff"]
FUZZ = settings(max_examples=150, derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


@ray.remote
def plus_one(x):
    return x + 1


@pytest.fixture(scope="module")
def daemon():
    d = spawn_daemon(head=True, num_cpus=1, parent_pid=os.getpid())
    try:
        ray.init(address=d.address, _token=d.token)
        yield d
    finally:
        try:
            ray.shutdown()
        finally:
            if os.environ.get("FUZZ_KEEP_LOG"):
                import shutil
                shutil.copy(os.path.join(d.session_dir, "daemon.log"), os.environ["FUZZ_KEEP_LOG"])
            d.stop()


def _log_tail(d: DaemonProcess) -> str:
    try:
        with open(os.path.join(d.session_dir, "daemon.log"), errors="replace") as f:
            return "".join(f.readlines()[-30:])
    except OSError as exc:
        return f"(no log: {exc})"


def _connect(d: DaemonProcess, kind: str) -> socket.socket:
    try:
        if kind == "tcp":
            host, port = d.address.rsplit(":", 1)
            return socket.create_connection((host, int(port)), timeout=30)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        try:
            s.connect(d.unix_path)
        except BaseException:
            s.close()
            raise
        return s
    except OSError as exc:
        try:
            d.proc.wait(timeout=5)
        except Exception:
            pass
        raise AssertionError(f"cannot connect to the daemon over {kind} ({exc!r}); alive: {d.alive()}; "
                             f"its log:\n{_log_tail(d)}") from None


def _read_frame(s: socket.socket) -> bytes:
    buf = b""
    while len(buf) < 4 or len(buf) < 4 + struct.unpack(">I", buf[:4])[0]:
        chunk = s.recv(65536)
        if not chunk:
            raise AssertionError(f"the daemon closed the connection mid-reply: {buf!r}")
        buf += chunk
    return buf[4:]


def _hello(token: str, role: str = "driver") -> bytes:
    return frame(json.dumps({"penumbra": PROTOCOL_VERSION, "token": token, "role": role, "name": "fuzz",
                             "schema": schema_fingerprint()}).encode())


def _send_and_wait_for_close(s: socket.socket, data: bytes) -> None:
    """Send ``data``, end our side, and wait until the daemon closes its side."""
    try:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        while s.recv(65536):  # the refusal, if any, then EOF
            pass
    except TimeoutError:
        raise AssertionError(f"the daemon did not close a connection after {data[:80]!r}...") from None
    except OSError:
        pass  # the daemon closed first (refused mid-stream: EPIPE, ECONNRESET, ENOTCONN): fine
    finally:
        s.close()


def _check_daemon(d: DaemonProcess, kind: str) -> None:
    """Alive, completes a fresh handshake on ``kind``, and runs a task."""
    assert d.alive(), f"the daemon died:\n{_log_tail(d)}"
    s = _connect(d, kind)
    try:
        s.sendall(_hello(d.token, role="cli"))
        reply = json.loads(_read_frame(s))
        assert reply["ok"] is True, reply
    finally:
        s.close()
    assert ray.get(plus_one.remote(41), timeout=60) == 42
    assert d.alive(), f"the daemon died:\n{_log_tail(d)}"


# ------------------------------------------------------------- strategies

_text = st.lists(st.one_of(st.characters(), st.sampled_from(SURROGATES)), max_size=12).map("".join)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def _hello_like(draw) -> bytes:
    """A JSON object shaped like a hello, with odd values (never the right token)."""
    obj = draw(st.fixed_dictionaries(
        {"penumbra": st.one_of(st.just(1), _json)},
        optional={"token": st.one_of(_text, _json), "role": st.one_of(_text, _json), "name": _json},
    ))
    if draw(st.booleans()):
        text = json.dumps(obj)  # ASCII, surrogates as \\udXXX escapes
        body = text.encode()
    else:  # raw UTF-8, lone surrogates as the (invalid) bytes they would be
        body = json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return frame(body)


_nesting = st.tuples(st.integers(1, 100_000), st.sampled_from([b"[", b'{"a":', b'{"penumbra": 1, "token": ['])).map(
    lambda t: frame(t[1] * t[0])
)
_any_header = st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=64)).map(
    lambda t: struct.pack(">I", t[0]) + t[1]
)
_before_auth_stream = st.lists(
    st.one_of(st.binary(max_size=256), _hello_like(), _nesting, _any_header), min_size=0, max_size=3
).map(b"".join)

_TAGS = sorted(c.__struct_config__.tag for c in wire_classes())
# what msgpack can carry (no lone surrogates, 64-bit ints), bytes included
_mp = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats() | st.text(max_size=12)
    | st.binary(max_size=24),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
_random_body = st.one_of(
    st.binary(max_size=256),  # not msgpack, or not a list
    st.lists(_mp, max_size=4).map(lambda v: b"\x01" + msgspec.msgpack.encode(v)),  # a list of junk messages
    # a real message's name with junk fields
    st.lists(st.tuples(st.sampled_from(_TAGS), st.lists(_mp, max_size=6)), min_size=1, max_size=3).map(
        lambda ms: b"\x01" + msgspec.msgpack.encode([[tag, *fields] for tag, fields in ms])),
    st.lists(_json, max_size=4).map(lambda v: pickle.dumps(v, protocol=5)),  # a pickle, as protocol 1 sent
    st.binary(max_size=64).map(lambda b: b"\x80\x05" + b),  # starts like a protocol-5 pickle
)
_after_auth_frames = st.lists(
    st.one_of(_random_body.map(frame), _random_body.map(lambda b: frame(b)[: max(1, len(b) // 2)])),
    min_size=1, max_size=3,
).map(b"".join)
_roles = st.sampled_from(["driver", "worker", "node", "cli", "someone"])


# ------------------------------------------------------------------ tests


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_bytes_before_authentication_never_hurt_the_daemon(daemon, kind):
    @FUZZ
    @given(batch=st.lists(_before_auth_stream, min_size=1, max_size=3))
    @example(batch=[frame(b"[" * 60_000)])  # RecursionError in json.loads killed the cluster
    @example(batch=[_hello("\ud800")])  # UnicodeEncodeError in token.encode killed it too
    @example(batch=[frame(b'{"penumbra": 1, "token": "' + b"\xed\xa0\x80" + b'"}')])
    @example(batch=[b"\xff\xff\xff\xff", b"\x00\x00", b""])
    def fuzz(batch):
        for data in batch:
            _send_and_wait_for_close(_connect(daemon, kind), data)
        _check_daemon(daemon, kind)

    fuzz()
    log = open(os.path.join(daemon.session_dir, "daemon.log"), errors="replace").read()
    assert "failed unexpectedly" not in log, _log_tail(daemon)
    assert "refused connection" in log  # the fuzz reached the refusals (logged rate-limited)


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_random_frames_after_authentication_end_only_that_connection(daemon, kind):
    @FUZZ
    @given(role=_roles, frames=st.lists(_after_auth_frames, min_size=1, max_size=2))
    @example(role="driver", frames=[frame(b"\x00not a pickle")])
    @example(role="node", frames=[frame(b"\x01" + msgspec.msgpack.encode([["NoSuchMessage", 1]]))])
    @example(role="driver", frames=[frame(b"\x01" + msgspec.msgpack.encode([["Deliver", "", "head", ["Heartbeat"]]]))])
    @example(role="worker", frames=[struct.pack(">I", 1 << 30) + b"\x80\x05]q"])  # 1 GiB announced, 4 bytes sent
    def fuzz(role, frames):
        for data in frames:
            s = _connect(daemon, kind)
            s.sendall(_hello(daemon.token, role))
            assert json.loads(_read_frame(s))["ok"] is True
            _send_and_wait_for_close(s, data)
        _check_daemon(daemon, kind)

    fuzz()
    log = open(os.path.join(daemon.session_dir, "daemon.log"), errors="replace").read()
    assert "failed; closing that connection" not in log, _log_tail(daemon)  # no handler crashed
