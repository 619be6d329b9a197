# Mirrors Ray's doc_code/obj_val.py (Ray Core "Objects: passing object
# arguments").
# Checks: literal arguments and top-level ObjectRef arguments both reach the
# task as values (refs are de-referenced).  The doc only prints from the
# task; this mirror also returns the values to assert them.
import penumbra as ray


@ray.remote
def echo(a: int, b: int, c: int):
    print(a, b, c)
    return a, b, c


assert ray.get(echo.remote(1, 2, 3)) == (1, 2, 3)
a, b, c = ray.put(1), ray.put(2), ray.put(3)
assert ray.get(echo.remote(a, b, c)) == (1, 2, 3)
