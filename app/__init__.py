"""dydc: derivatives of numerical routines over HTTP."""

import os

__version__ = "0.1.0"

# Before torch loads OpenMP (which reads this once): its threads wait for the next parallel
# loop asleep rather than spinning. Compiled graphs run their loops on OpenMP's threads, and
# under a stream of small launches the spinning thread took a core beside the event loop:
# small requests at c=64 went from 3,400 to 2,100-2,500 req/s with it spinning and 5,300 with
# it asleep (per-thread CPU time under wrk, docs/benchmarks.md). An operator's setting stands.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
