"""MONAI transforms of LatentSR: intensity windowing, slicing and the model grid, simulated degradations.

One line per module; each module lists its public names in ``__all__``.
"""

from .degradations import *  # noqa: F401,F403
from .intensity import *  # noqa: F401,F403
from .slicing import *  # noqa: F401,F403
