# Mirrors Ray's doc_code/get_or_create.py (Ray Core "Named actors: get or
# create").
# Checks: ActorClass.options(name=..., get_if_exists=True).remote(args)
# creates the named actor the first time and returns the existing one
# (ignoring the new args) the second time.  Implicit init.
# (Ray's doc program spells it with get_if_exists=True; there is no
# ActorClass.get_or_create in Ray's API.)
import penumbra as ray


@ray.remote
class Greeter:
    def __init__(self, value):
        self.value = value

    def say_hello(self):
        return self.value


# the actor g1 does not exist yet: it is created with these args
a = Greeter.options(name="g1", get_if_exists=True).remote("Old Greeting")
assert ray.get(a.say_hello.remote()) == "Old Greeting"
# g1 exists: it is returned, and the new args are ignored
b = Greeter.options(name="g1", get_if_exists=True).remote("New Greeting")
assert ray.get(b.say_hello.remote()) == "Old Greeting"
