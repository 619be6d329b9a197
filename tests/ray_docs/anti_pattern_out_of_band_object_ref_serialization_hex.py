# Mirrors Ray's doc_code/anti_pattern_out_of_band_object_ref_serialization_hex.py
# (Ray Core anti-pattern: rebuilding a ref from its hex string).
# Checks: an actor method returns a ref it put; ref.hex() rebuilt with
# ray.ObjectRef(bytes.fromhex(...)) in a task and waited on with
# fetch_local=False may be ready or not (the doc says "likely (0, 1)"); the
# ref itself passed to a task is ready: (1, 0).
# Changed: the doc passes the ref as a top-level argument, which Ray resolves
# to its value (42), so its consumer_correct calls wait([42]) and raises on
# Ray too; the mirror passes it inside a list, so the task gets the ref the
# doc means.  Scaled down: wait timeout 2 s instead of 5 s.
import penumbra as ray

ray.init()


@ray.remote
class Producer:
    def make(self):
        return ray.put(42)


@ray.remote
def consumer_broken(ref_hex, timeout):
    ref = ray.ObjectRef(bytes.fromhex(ref_hex))
    ready, not_ready = ray.wait([ref], timeout=timeout, fetch_local=False)
    return len(ready), len(not_ready)


@ray.remote
def consumer_correct(refs, timeout):
    ref = refs[0]
    ready, not_ready = ray.wait([ref], timeout=timeout, fetch_local=False)
    return len(ready), len(not_ready)


producer = Producer.remote()
inner = ray.get(producer.make.remote())
broken = ray.get(consumer_broken.remote(inner.hex(), 2.0))
assert broken in ((0, 1), (1, 0)), broken
print(f"broken: ready={broken[0]}, not_ready={broken[1]}")
assert ray.get(consumer_correct.remote([inner], 2.0)) == (1, 0)
