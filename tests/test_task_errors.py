"""Errors of nested tasks, as Ray raises them (issue 12, item 7).

A task that calls ``get`` on a failed child and does not catch the error fails in
turn; at the top, ``get`` raises an error that is still an instance of the
*root* exception's class (``except ValueError`` catches it however deep it
was raised), whose text names every task on the way, outermost first, and
whose tracebacks point at the user's file and line -- including for
functions pickled by value (defined in ``__main__`` or inside a function),
which cloudpickle would otherwise label ``<dynamic-code>``.

The real runtime (daemon, worker processes) and the simulator run the same
checks: they share the error path (``penumbra.api.execution``).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap

import pytest

import penumbra as ray
from penumbra import exceptions as exc

pytestmark = pytest.mark.timeout(120)

HERE = os.path.abspath(__file__)


def line_of(marker: str) -> int:
    """The line of this file holding ``marker`` (where a test's ``raise`` is)."""
    with open(HERE) as f:
        hits = [i for i, text in enumerate(f, 1) if marker in text and "line_of(" not in text]
    assert len(hits) == 1, (marker, hits)
    return hits[0]


class Custom(Exception):
    """A user's exception class with its own constructor and attribute."""

    def __init__(self, code: int) -> None:
        super().__init__(f"custom failure {code}")
        self.code = code


class Final(Exception):
    """An exception class that refuses subclasses: the error stays a plain
    ``TaskError`` with the cause readable."""

    def __init_subclass__(cls, **kw):
        raise TypeError("Final cannot be subclassed")


@ray.remote(max_retries=0)
def inner():
    raise ValueError("deep failure")  # RAISE-INNER


@ray.remote(max_retries=0)
def middle():
    return ray.get(inner.remote())


@ray.remote(max_retries=0)
def outer():
    return ray.get(middle.remote())


@ray.remote(max_retries=0)
def custom_inner(code):
    raise Custom(code)  # RAISE-CUSTOM


@ray.remote(max_retries=0)
def custom_outer(code):
    return ray.get(custom_inner.remote(code))


@ray.remote(max_retries=0)
def final_inner():
    raise Final("no subclass")


@ray.remote(max_retries=0)
def final_outer():
    return ray.get(final_inner.remote())


@ray.remote
class Caller:
    def call_inner(self):
        return ray.get(inner.remote())


@ray.remote
def describe(err):
    """What a worker process sees of an error passed to it as a value."""
    return (type(err).__name__, isinstance(err, ValueError), isinstance(err, exc.TaskError),
            repr(err.cause), str(err))


def in_order(text: str, *parts: str) -> bool:
    """Whether every part occurs in ``text``, in this order."""
    at = 0
    for p in parts:
        at = text.find(p, at)
        if at < 0:
            return False
        at += len(p)
    return True


# ------------------------------------------------------------------ the checks, for either runtime


def check_three_deep() -> str:
    with pytest.raises(ValueError, match="deep failure") as info:
        ray.get(outer.remote())
    e = info.value
    assert isinstance(e, exc.TaskError) and isinstance(e, exc.RayTaskError)
    assert type(e.cause) is ValueError and e.cause.args == ("deep failure",)
    text = str(e)
    assert in_order(text, "task test_task_errors.outer", "task test_task_errors.middle",
                    "task test_task_errors.inner", "ValueError: deep failure"), text
    assert f'File "{HERE}", line {line_of("RAISE-INNER")}, in inner' in text, text
    assert "<dynamic-code>" not in text
    # each task's own frame: where it called get
    assert in_order(text, "in outer", "ray.get(middle.remote())", "in middle", "ray.get(inner.remote())"), text
    return text


def check_actor_method() -> None:
    with pytest.raises(ValueError, match="deep failure") as info:
        ray.get(Caller.remote().call_inner.remote())
    text = str(info.value)
    assert isinstance(info.value, exc.TaskError)
    assert in_order(text, "task Caller.call_inner", "in call_inner", "task test_task_errors.inner",
                    f'File "{HERE}", line {line_of("RAISE-INNER")}, in inner'), text


def check_custom_class() -> None:
    with pytest.raises(Custom) as info:
        ray.get(custom_outer.remote(7))
    e = info.value
    assert isinstance(e, exc.TaskError)
    assert e.code == 7 and type(e.cause) is Custom and e.cause.code == 7
    text = str(e)
    assert in_order(text, "task test_task_errors.custom_outer", "task test_task_errors.custom_inner",
                    f'File "{HERE}", line {line_of("RAISE-CUSTOM")}, in custom_inner', "custom failure 7"), text


def check_unsubclassable_class() -> None:
    with pytest.raises(exc.TaskError) as info:
        ray.get(final_outer.remote())
    e = info.value
    assert not isinstance(e, Final) and type(e.cause) is Final and e.cause.args == ("no subclass",)
    assert in_order(str(e), "Final: task test_task_errors.final_outer", "task test_task_errors.final_inner",
                    "no subclass"), str(e)


def check_function_pickled_by_value() -> None:
    # defined inside a test, as in a script's __main__: cloudpickle ships it
    # by value, and its traceback must still name this file and line
    @ray.remote(max_retries=0)
    def local_inner():
        raise KeyError("local")  # RAISE-LOCAL

    @ray.remote(max_retries=0)
    def local_outer():
        return ray.get(local_inner.remote())

    with pytest.raises(KeyError) as info:
        ray.get(local_outer.remote())
    text = str(info.value)
    assert f'File "{HERE}", line {line_of("RAISE-LOCAL")}, in local_inner' in text, text
    assert 'raise KeyError("local")' in text  # the source line is found, too
    assert "<dynamic-code>" not in text
    assert in_order(text, "local_outer", "local_inner"), text


def check_error_crosses_processes() -> None:
    with pytest.raises(ValueError) as info:
        ray.get(outer.remote())
    e = info.value
    again = pickle.loads(pickle.dumps(e))
    assert type(again) is type(e) and isinstance(again, ValueError) and str(again) == str(e)
    name, is_value_error, is_task_error, cause, text = ray.get(describe.remote(e))
    assert (name, is_value_error, is_task_error, cause) == ("TaskError(ValueError)", True, True,
                                                              "ValueError('deep failure')")
    assert text == str(e)


CHECKS = [check_three_deep, check_actor_method, check_custom_class, check_unsubclassable_class,
          check_function_pickled_by_value, check_error_crosses_processes]


# ------------------------------------------------------------------ real processes


class TestRealRuntime:
    @pytest.fixture(scope="class", autouse=True)
    def cluster(self):
        ray.init(num_cpus=2, object_store_memory=128 << 20)
        yield
        ray.shutdown()

    @pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
    def test_nested_error(self, check):
        check()

    def test_no_penumbra_frames_around_the_users(self):
        text = check_three_deep()
        assert "penumbra/transports/worker.py" not in text and "penumbra/api/functions.py" not in text, text


@pytest.mark.timeout(180)
def test_script_run_as_main_shows_the_script_path(tmp_path):
    """A script's functions (``__main__``, pickled by value) keep its path
    and line numbers in a nested error's traceback."""
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent('''\
        import penumbra as ray

        @ray.remote(max_retries=0)
        def leaf():
            raise ValueError("from the script")

        @ray.remote(max_retries=0)
        def trunk():
            return ray.get(leaf.remote())

        if __name__ == "__main__":
            ray.init(num_cpus=2, object_store_memory=64 << 20)
            try:
                ray.get(trunk.remote())
            except ValueError as e:
                print("CAUGHT", isinstance(e, ray.exceptions.TaskError))
                print(e)
            finally:
                ray.shutdown()
        '''))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.path.dirname(os.path.dirname(ray.__file__)),
                                                                     os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=150)
    assert out.returncode == 0, out.stderr
    assert "CAUGHT True" in out.stdout, out.stdout + out.stderr
    assert in_order(out.stdout, "task __main__.trunk", f'File "{script}", line 9, in trunk',
                    "task __main__.leaf", f'File "{script}", line 5, in leaf',
                    'raise ValueError("from the script")', "ValueError: from the script"), out.stdout


# ------------------------------------------------------------------ the simulator


@pytest.fixture
def simulated():
    ray.init(simulated=True)
    yield
    ray.shutdown()


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_nested_error_simulated(simulated, check):
    check()
