# Mirrors Ray's doc_code/get_or_create.py (Ray Core "Named actors: get or
# create").
# Checks: ActorClass.options(name=...).get_or_create(args) creates the named
# actor the first time and returns the existing one (ignoring new args) the
# second time.  Implicit init.
import penumbra as ray


@ray.remote
class Greeter:
    def __init__(self, value):
        self.value = value

    def say_hello(self):
        return self.value


a = Greeter.options(name="g1").get_or_create("Hi Alice")
assert ray.get(a.say_hello.remote()) == "Hi Alice"
b = Greeter.options(name="g1").get_or_create("Hi Dave")
assert ray.get(b.say_hello.remote()) == "Hi Alice"
