import sys

from LatentSRLib.cli import main

sys.exit(main())
