# Mirrors Ray's doc_code/actor-repr.py (Ray Core "Actors: custom __repr__ for
# actor logs").
# Checks: an actor class defining __repr__ can be created and called (Ray
# uses the repr to prefix the actor's log lines).  Implicit init.
import penumbra as ray


@ray.remote
class MyActor:
    def __init__(self, index):
        self.index = index

    def foo(self):
        print("hello there")
        return repr(self)

    def __repr__(self):
        return f"MyActor(index={self.index})"


a = MyActor.remote(1)
b = MyActor.remote(2)
assert ray.get(a.foo.remote()) == "MyActor(index=1)"
assert ray.get(b.foo.remote()) == "MyActor(index=2)"
