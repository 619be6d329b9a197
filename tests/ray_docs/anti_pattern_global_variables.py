# Mirrors Ray's doc_code/anti_pattern_global_variables.py (Ray Core
# anti-pattern "Using global variables to share state").
# Checks: an actor sees the global's value as shipped with the class (3),
# not the driver's later change (so f returns 6, not 7); sharing state
# through an actor handle passed to another actor works (7).
import penumbra as ray

ray.init()

global_var = 3


@ray.remote
class Reader:
    def f(self):
        return global_var + 3


actor = Reader.remote()
global_var = 4
assert ray.get(actor.f.remote()) == 6


@ray.remote
class GlobalVarActor:
    def __init__(self):
        self.global_var = 3

    def set_global_var(self, var):
        self.global_var = var

    def get_global_var(self):
        return self.global_var


@ray.remote
class Consumer:
    def __init__(self, holder):
        self.holder = holder

    def f(self):
        return ray.get(self.holder.get_global_var.remote()) + 3


holder = GlobalVarActor.remote()
consumer = Consumer.remote(holder)
ray.get(holder.set_global_var.remote(4))
assert ray.get(consumer.f.remote()) == 7
