# Mirrors Ray's doc_code/object_ref_serialization.py (Ray Core "Serializing
# object refs out of band").
# Checks: a ref dumped to a file with ray.cloudpickle stays pinned after the
# driver's ref is deleted, and the ref loaded back gets the value.
# Left out: the final ray._private.internal_api.free (a private API).
# The file goes to a temporary directory.
import os
import tempfile

import penumbra as ray
from penumbra import cloudpickle

path = os.path.join(tempfile.mkdtemp(), "external_store.pickle")
ray.init()
my_dict = {"hello": "world"}
ref = ray.put(my_dict)
with open(path, "wb+") as f:
    cloudpickle.dump(ref, f)
del ref
with open(path, "rb") as f:
    loaded = cloudpickle.load(f)
assert ray.get(loaded) == my_dict
