# Mirrors Ray's doc_code/gotchas.py (Ray Core "Gotchas": environment
# variables are not passed from the driver to workers).
# Checks: a task does not see an environment variable FOO the driver does
# not pass on (the doc: "myenv is None"); after shutdown, ray.init(runtime_env=
# {"env_vars": {"FOO": "bar"}}) makes the task see "bar".
import os

import penumbra as ray

ray.init()


@ray.remote
def myfunc():
    return os.environ.get("FOO")


os.environ.pop("FOO", None)
assert ray.get(myfunc.remote()) is None
ray.shutdown()

ray.init(runtime_env={"env_vars": {"FOO": "bar"}})


@ray.remote
def myfunc2():
    return os.environ.get("FOO")


assert ray.get(myfunc2.remote()) == "bar"
