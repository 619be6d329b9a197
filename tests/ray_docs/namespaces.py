# Mirrors Ray's doc_code/namespaces.py (Ray Core "Using namespaces").
# Checks: ray.init(namespace="hello"); against a cluster started with the CLI
# (`ray start --head` -> `penumbra start --head`): jobs connecting with
# `with ray.init(address, namespace=...)` see named detached actors only in
# their own namespace (get_actor raises ValueError elsewhere) and may reuse a
# name in another namespace; detached actors outlive their job; options(
# namespace=...) and get_actor(name, namespace=...); two anonymous-namespace
# jobs may both create "my_actor"; init(address="auto", namespace="colors")
# and get_runtime_context().namespace; ClusterInfo.disconnect().
# Changed: penumbra has no Ray Client (ray://host:10001); jobs connect to the
# head's host:port.  The CLI runs with a private PENUMBRA_HOME and a free port.
import os
import socket
import subprocess
import sys
import tempfile

import penumbra as ray

ray.init(namespace="hello")
ray.shutdown()

os.environ["PENUMBRA_HOME"] = tempfile.mkdtemp(prefix="penumbra-home-")
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
address = f"127.0.0.1:{port}"


def cli(*args):
    return subprocess.check_output([sys.executable, "-m", "penumbra.cli", *args], text=True, timeout=10)


@ray.remote
class Actor:
    pass


try:
    cli("start", "--head", "--port", str(port), "--num-cpus", "2")

    with ray.init(address, namespace="colors"):
        Actor.options(name="orange", lifetime="detached").remote()
        Actor.options(name="purple", lifetime="detached").remote()

    with ray.init(address, namespace="fruits"):
        try:
            ray.get_actor("orange")
        except ValueError:
            pass
        else:
            raise AssertionError("'orange' leaked out of the colors namespace")
        Actor.options(name="orange", lifetime="detached").remote()
        Actor.options(name="watermelon", lifetime="detached").remote()

    context = ray.init(address, namespace="colors")
    try:
        ray.get_actor("watermelon")
    except ValueError:
        pass
    else:
        raise AssertionError("'watermelon' leaked out of the fruits namespace")
    ray.get_actor("orange")
    context.disconnect()

    ctx = ray.init(address)
    Actor.options(name="my_actor", namespace="actor_namespace", lifetime="detached").remote()
    ray.get_actor("my_actor", namespace="actor_namespace")
    ctx.disconnect()

    with ray.init(address):
        Actor.options(name="my_actor", lifetime="detached").remote()
    with ray.init(address):
        Actor.options(name="my_actor", lifetime="detached").remote()

    ray.init(address="auto", namespace="colors")
    assert ray.get_runtime_context().namespace == "colors"
    ray.shutdown()
finally:
    cli("stop", "--address", address)
