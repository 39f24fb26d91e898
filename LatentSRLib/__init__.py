"""LatentSR: latent-diffusion super-resolution for medical images.

The engine behind the ``latentsr`` command, the MONAI bundle in ``Training/`` and the 3D Slicer
module in ``LatentSR/``. It never imports slicer, qt, ctk or vtk.
"""

__version__ = "0.1.0"
