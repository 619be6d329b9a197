# Mirrors Ray's doc_code/actor-pool.py (Ray Core "Actor pool" utility page).
# Checks: ray.util.ActorPool over two actors; pool.map yields results in
# submission order: [2, 4, 6, 8].  No ray.init(): implicit init.
import penumbra as ray
from penumbra.util import ActorPool


@ray.remote
class Doubler:
    def double(self, n):
        return n * 2


pool = ActorPool([Doubler.remote(), Doubler.remote()])
out = list(pool.map(lambda actor, v: actor.double.remote(v), [1, 2, 3, 4]))
print(out)
assert out == [2, 4, 6, 8]
