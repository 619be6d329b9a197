# Mirrors Ray's doc_code/actor-http-server.py (Ray Core "Async actors:
# running a server in an actor's event loop").
# Checks: an async actor whose async __init__ starts a background HTTP server
# on the actor's event loop; the driver increments the counter 5 times and an
# HTTP GET answers "5".
# Changed: the doc uses aiohttp (not installed here); this mirror serves
# HTTP with asyncio.start_server and fetches with urllib.  Port: a free one
# picked by the driver instead of 25001.
import asyncio
import socket
import urllib.request

import penumbra as ray


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@ray.remote
class Counter:
    async def __init__(self, port):
        self.counter = 0
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", port)

    async def serve(self, reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        body = str(self.counter).encode()
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    async def increment(self):
        self.counter += 1


ray.init()
port = free_port()
counter = Counter.remote(port)
for _ in range(5):
    ray.get(counter.increment.remote())
with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
    assert r.read().decode() == "5"
