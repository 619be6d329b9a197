# Mirrors Ray's doc_code/task_exceptions.py (Ray Core "Fault tolerance:
# task exceptions" page).
# Checks: a task's exception surfaces from get as RayTaskError; a task whose
# argument failed raises RayTaskError too; a user exception class can be
# caught directly (the error is also an instance of it); an exception class
# that refuses subclassing comes back as a RayTaskError whose .cause is the
# user exception.
import penumbra as ray


@ray.remote
def fails():
    raise Exception("the real error")


@ray.remote
def takes(x):
    return None


try:
    ray.get(fails.remote())
except ray.exceptions.RayTaskError as e:
    assert "the real error" in str(e)
else:
    raise AssertionError("expected RayTaskError")

try:
    ray.get(takes.remote(fails.remote()))
except ray.exceptions.RayTaskError as e:
    assert "the real error" in str(e)
else:
    raise AssertionError("expected RayTaskError from a failed argument")


class MyException(Exception):
    pass


@ray.remote
def raises_mine():
    raise MyException("a user exception")


try:
    ray.get(raises_mine.remote())
except MyException as e:
    assert "a user exception" in str(e)
    assert isinstance(e, ray.exceptions.RayTaskError)
else:
    raise AssertionError("expected MyException")


class FinalException(Exception):
    def __init_subclass__(cls, /, *args, **kwargs):
        raise TypeError("this exception class cannot be subclassed")


@ray.remote
def raises_final():
    raise FinalException("a final user exception")


try:
    ray.get(raises_final.remote())
except ray.exceptions.RayTaskError as e:
    assert isinstance(e.cause, FinalException)
    assert str(e.cause) == "a final user exception"
else:
    raise AssertionError("expected RayTaskError with .cause")
