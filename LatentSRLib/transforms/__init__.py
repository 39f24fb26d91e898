"""MONAI transforms of LatentSR: intensity windowing, slicing and the model grid, simulated degradations.

One line per module; each module lists its public names in ``__all__``.
"""

from LatentSRLib.transforms.degradations import *  # noqa: F401,F403
from LatentSRLib.transforms.intensity import *  # noqa: F401,F403
from LatentSRLib.transforms.slicing import *  # noqa: F401,F403
