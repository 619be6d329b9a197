# Mirrors Ray's doc_code/monte_carlo_pi.py (Ray Core example "Monte Carlo
# estimation of pi").
# Checks: as getting_started.py (progress actor, fire-and-forget reports,
# polling to 100%, estimate close to pi), without the final shutdown.
# Scaled down: see _pi.py.
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import penumbra as ray  # noqa: E402
import _pi  # noqa: E402

ray.init()
_pi.run(shutdown=False)
