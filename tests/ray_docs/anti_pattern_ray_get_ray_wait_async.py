# Mirrors Ray's doc_code/anti_pattern_ray_get_ray_wait_async.py (Ray Core
# anti-pattern "Blocking get/wait in async code").
# Checks: get/wait called from a coroutine (blocking) work; refs are
# awaitable in the driver's asyncio loop: await ref, asyncio.gather(ref),
# asyncio.wait([ref]).  Implicit init.  Scaled down: tasks sleep 0.3 s, not 1 s.
import asyncio
import time

import penumbra as ray


@ray.remote
def f(x):
    time.sleep(0.3)
    return x


async def blocking():
    o1, o2, o3 = f.remote(1), f.remote(2), f.remote(3)
    assert ray.get(o1) == 1
    assert ray.get([o2])[0] == 2
    ray.wait([o3])


async def non_blocking():
    o1, o2, o3 = f.remote(1), f.remote(2), f.remote(3)
    assert await o1 == 1
    assert (await asyncio.gather(o2))[0] == 2
    done, _ = await asyncio.wait([o3], return_when=asyncio.FIRST_COMPLETED)
    assert len(done) == 1


asyncio.run(blocking())
asyncio.run(non_blocking())
