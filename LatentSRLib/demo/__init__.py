"""``latentsr demo``: the whole pipeline on real registry scans (see :mod:`.run`)."""

from LatentSRLib.demo.run import *  # noqa: F401,F403
from LatentSRLib.demo.run import __all__  # noqa: F401
