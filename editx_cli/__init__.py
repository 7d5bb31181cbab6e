"""editx: batch audio editing with Step-Audio-EditX."""

import os

__version__ = "0.1.0"

# The decoder, the vocoder and the run loop each run torch on a thread of their own, and each
# thread gets its own OpenMP team; teams that spin while idle take the cores from the one at
# work (on 2 cores, a quarter of the decoder's speed), and from the other services of a shared
# machine. Set before torch loads its OpenMP runtime; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
