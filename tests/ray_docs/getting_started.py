# Mirrors Ray's doc_code/getting_started.py (Ray Core "Getting started":
# Monte Carlo estimation of pi).
# Checks: ray.init(); a progress actor handle passed to sampling tasks that
# report to it asynchronously (fire-and-forget actor calls from tasks); the
# driver polls progress until 100%; the estimate is close to pi; shutdown.
# Scaled down: see _pi.py.
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import penumbra as ray  # noqa: E402
import _pi  # noqa: E402

ray.init()
_pi.run(shutdown=True)
