"""Medical images and volumes with their geometry: read, describe, write.

The one place files enter and leave LatentSR. See :mod:`.image` for the array and geometry
conventions and :mod:`.formats` for the supported formats.
"""

from LatentSRLib.io.atomic import (atomic_directory, atomic_path, check_output_folder, check_writable,
                                  refuse_overwriting_inputs)
from LatentSRLib.io.describe import describe_image
from LatentSRLib.io.formats import FORMATS, detect_format, output_format, read_image, write_image
from LatentSRLib.io.image import MedicalImage, array_axis_of_index_axis, index_axis_of_array_axis
from LatentSRLib.io.validate import check_pixels, require_volume

__all__ = [
    "FORMATS",
    "MedicalImage",
    "array_axis_of_index_axis",
    "atomic_directory",
    "check_output_folder",
    "check_writable",
    "atomic_path",
    "check_pixels",
    "describe_image",
    "detect_format",
    "index_axis_of_array_axis",
    "output_format",
    "read_image",
    "refuse_overwriting_inputs",
    "require_volume",
    "write_image",
]
