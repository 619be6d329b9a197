"""A head that drops a node: the node backs off, and both say why (real processes).

* A head that drops every node shortly after it joins (a test head in this
  process, speaking the real protocol to a real node daemon) sees the node
  come back spaced out by exponential backoff, not in a tight loop (one
  such loop rejoined 20,694 times in 95 minutes and grew the head to
  ~14.7 GB); the node's log names what the head said, once, and sums the
  streak up in one line rather than a line per attempt.
* A real head daemon that cannot read a node's frame says so in its log and
  tells the node (``Closing``) before it closes: that loop's head closed the
  connection in silence (a message its codec did not know), so neither log
  said why.
"""

from __future__ import annotations

import os
import re
import threading
import time

import pytest
import trio

from penumbra.transports import protocol as P
from penumbra.transports.wire import ConnectionClosed, connect_tcp, serve_tcp
from test_head_recover_real import FAST, STORE, _free_port, _Local, wait_for

TOKEN = "rejoin-backoff-test-token-0123456789abcdef"


class DroppingHead:
    """A head (in a thread of this process) that accepts node daemons and
    drops each one ``hold`` seconds after its ``NodeHello``, saying why."""

    REASON = "the test's head drops every node"

    def __init__(self, hold: float = 0.05) -> None:
        self.hold = hold
        self.joins: list[tuple[float, str]] = []  # (monotonic time, node id) per connection
        self.port = 0
        self._ready = threading.Event()
        self._stop: trio.CancelScope | None = None
        self._trio_token = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    def __enter__(self) -> "DroppingHead":
        self._thread.start()
        assert self._ready.wait(10), "the test head did not start"
        return self

    def __exit__(self, *exc) -> None:
        if self._trio_token is not None:
            try:
                self._trio_token.run_sync_soon(self._stop.cancel)
            except trio.RunFinishedError:
                pass
        self._thread.join(10)

    async def _main(self) -> None:
        self._trio_token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as self._stop:
            async with trio.open_nursery() as n:
                bound = await n.start(serve_tcp, "127.0.0.1", 0, self._on_connection, TOKEN)
                self.port = bound[1]
                self._ready.set()

    async def _on_connection(self, ch) -> None:
        first = await ch.receive()
        if type(first) is not P.NodeHello:
            return
        self.joins.append((time.monotonic(), first.node_id))
        await trio.sleep(self.hold)
        await ch.send(P.Closing(self.REASON))
        # (returning closes the connection, after what is queued is written)


@pytest.mark.timeout(120)
def test_a_node_that_a_head_keeps_dropping_comes_back_spaced_out(tmp_path):
    local = _Local(tmp_path)
    token_file = os.path.join(str(tmp_path), "token")
    with open(token_file, "w") as f:
        f.write(TOKEN + "\n")
    try:
        with DroppingHead() as head:
            out = local.penumbra("start", "--address", f"127.0.0.1:{head.port}", "--port", str(_free_port()),
                                 "--num-cpus", "1", "--token-file", token_file, *FAST, *STORE)
            log = re.search(r"Its log: (\S+)", out).group(1)
            wait_for(lambda: head.joins, "the node to join")
            t0 = head.joins[0][0]
            window = 8.0
            time.sleep(window)  # (a window to count in: the bounds below hold for any timing)
            joins = [t for t, _ in head.joins if t - t0 <= window]
        # Without backoff it rejoined every ~0.1 s (dozens here).  With it,
        # the n-th quick end waits 0.5 * 2**(n-1) s jittered to [half, all]:
        # at least 0.25 + 0.5 + 1 + 2 + 4 s before the 6th rejoin (> 8 s
        # with the holds), at most 0.5 + 1 + 2 s before the 4th.
        assert 3 <= len(joins) <= 6, f"{len(joins)} joins within {window} s: {[round(t - t0, 2) for t in joins]}"
        ids = [nid for _, nid in head.joins]
        assert len(set(ids)) == len(ids), ids  # (each a new incarnation)
        text = open(log).read()
        assert f"the head said: {DroppingHead.REASON}" in text, text[-3000:]
        # one line for the first end (the streak's next line comes a minute
        # later, with the count): never a line per attempt
        assert text.count("ERROR penumbra.daemon: lost the connection to the head daemon") == 1, text[-3000:]
        assert text.count("after it joined: it waits") == 1, text[-3000:]
        assert text.count("rejoined the cluster as") <= 1, text[-3000:]
    finally:
        local.close()


@pytest.mark.timeout(120)
def test_a_head_that_cannot_read_a_node_says_why_before_closing(tmp_path):
    local = _Local(tmp_path)
    try:
        port = _free_port()
        out = local.penumbra("start", "--head", "--port", str(port), "--num-cpus", "1", *FAST, *STORE)
        token = re.search(r"Cluster token \(keep it secret\): (\w+)", out).group(1)
        head_log = re.search(r"Its log: (\S+)", out).group(1)

        async def a_node_that_sends_junk() -> list:
            got = []
            with trio.fail_after(30):
                ch = await connect_tcp("127.0.0.1", port, token, "node", "node:junk-sender")
                ch.send_nowait(P.NodeHello("node:junk-sender", "127.0.0.1:1"))
                await ch.receive()  # (HeadInfo: the head took the node)
                # a frame whose body no codec reads (an unknown format byte)
                await ch._t.send_all(b"\x00\x00\x00\x05\x7fjunk")
                try:
                    while True:
                        got.append(await ch.receive())
                except ConnectionClosed:
                    pass
                await ch.aclose()
            return got

        got = trio.run(a_node_that_sends_junk)
        closing = [m for m in got if type(m) is P.Closing]
        assert closing and "the head could not read what this node sent" in closing[0].reason, got
        wait_for(lambda: "dropping the connection of node node:junk-sender" in open(head_log).read(),
                 "the head's log to say why it dropped the node", timeout=10)
    finally:
        local.close()
