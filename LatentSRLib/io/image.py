"""The image model shared by every reader, writer and transform: pixels plus their geometry.

Conventions (the same as SimpleITK's ``GetArrayFromImage`` and Slicer's ``arrayFromVolume``):

* ``array`` is in numpy order, slowest axis first: ``(k, j, i)`` for a volume, ``(rows, cols)``
  = ``(j, i)`` for a 2D image.
* ``spacing``, ``origin`` and the columns of ``direction`` are in index order ``(i, j[, k])`` and
  in DICOM/ITK world coordinates (LPS, millimetres). ``origin`` is the centre of the first voxel.
* ``direction[:, d]`` is the unit vector along index axis ``d`` in LPS.

So array axis ``a`` of an ``n``-dimensional image is index axis ``n - 1 - a``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["MedicalImage", "PLANES", "array_axis_of_index_axis", "index_axis_of_array_axis"]

#: anatomical plane -> the LPS world axis normal to it (slices of a plane are stacked along that axis)
PLANES: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2}


def array_axis_of_index_axis(index_axis: int, ndim: int) -> int:
    """Array axis (numpy order) holding index axis ``index_axis`` (0 = i, 1 = j, 2 = k)."""
    return ndim - 1 - index_axis


def index_axis_of_array_axis(array_axis: int, ndim: int) -> int:
    """Index axis (0 = i, 1 = j, 2 = k) stored along numpy axis ``array_axis``."""
    return ndim - 1 - array_axis


@dataclass
class MedicalImage:
    """A 2D image or 3D volume with its physical geometry.

    Attributes:
        array: pixels in numpy order, ``(k, j, i)`` or ``(rows, cols)``; any real dtype.
        spacing: voxel size in mm along ``(i, j[, k])``.
        origin: LPS position in mm of the centre of the first voxel.
        direction: ``(ndim, ndim)`` matrix whose column ``d`` is the LPS unit vector of index axis ``d``.
        metadata: free-form facts about the source (``format``, ``modality``,
            ``series_description``, notes the reader wants to pass on...).
        path: the file or folder this image was read from, if any.
        dicom_headers: for DICOM sources, one pixel-less ``pydicom.Dataset`` per slice in the order
            of ``array`` axis 0 (one for a 2D image), kept so a result can be written back as a
            derived series of the same study.
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    dicom_headers: list[Any] | None = None

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        n = self.array.ndim
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        if n not in (2, 3):
            raise ValueError(f"a MedicalImage is 2D or 3D, got an array of shape {self.array.shape}")
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(n, n)
        if len(self.spacing) != n or len(self.origin) != n:
            raise ValueError(
                f"geometry of a {n}D image needs {n} spacings and origin coordinates, "
                f"got spacing={self.spacing} origin={self.origin}"
            )

    # ----------------------------------------------------------------------------- basic facts
    @property
    def ndim(self) -> int:
        return self.array.ndim

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def size_ijk(self) -> tuple[int, ...]:
        """Number of voxels along ``(i, j[, k])`` (the reverse of ``shape``)."""
        return tuple(reversed(self.array.shape))

    def index_to_world(self) -> np.ndarray:
        """Homogeneous ``(ndim+1, ndim+1)`` matrix mapping ``(i, j[, k], 1)`` to LPS millimetres."""
        n = self.ndim
        affine = np.eye(n + 1)
        affine[:n, :n] = self.direction @ np.diag(self.spacing)
        affine[:n, n] = self.origin
        return affine

    def ijk_to_ras(self) -> np.ndarray:
        """The 4x4 IJK-to-RAS matrix of this volume (what a Slicer volume node holds)."""
        if self.ndim != 3:
            raise ValueError("IJK-to-RAS is defined for 3D volumes")
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.index_to_world()

    @classmethod
    def from_ijk_to_ras(cls, array: np.ndarray, ijk_to_ras: np.ndarray, **kwargs: Any) -> MedicalImage:
        """A volume from a ``(k, j, i)`` array and a 4x4 IJK-to-RAS matrix (Slicer's convention)."""
        lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(ijk_to_ras, dtype=np.float64)
        spacing = np.linalg.norm(lps[:3, :3], axis=0)
        return cls(array, tuple(spacing), tuple(lps[:3, 3]), lps[:3, :3] / spacing, **kwargs)

    def orientation(self) -> str | None:
        """Anatomical axis codes of ``(i, j, k)``, e.g. ``"LPS"`` or ``"RAS"``.

        Each letter names the direction an index axis points to (nibabel's convention), taken from
        the closest anatomical axis for oblique volumes. ``None`` for 2D images.
        """
        if self.ndim != 3:
            return None
        from nibabel.orientations import aff2axcodes

        lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
        return "".join(aff2axcodes(lps_to_ras @ self.index_to_world()))

    def index_axes_to_world_axes(self) -> list[tuple[int, int]]:
        """For each index axis ``(i, j, k)``: ``(world axis 0=L/R 1=P/A 2=S/I, sign)``.

        A one-to-one assignment (nibabel's ``io_orientation``), so an oblique volume still gets
        exactly one index axis per anatomical direction.
        """
        if self.ndim != 3:
            raise ValueError("anatomical axes are defined for 3D volumes only")
        from nibabel.orientations import io_orientation

        ornt = io_orientation(self.index_to_world())
        return [(int(world), int(sign)) for world, sign in ornt]

    def array_axis_for_plane(self, plane: str) -> int:
        """Array axis along which the slices of ``plane`` (axial, coronal, sagittal) are stacked.

        Resolved from the direction matrix, not assumed from the array layout: for a sagittal
        acquisition the axial slices lie along an in-plane array axis.
        """
        if plane not in PLANES:
            raise ValueError(f"unknown plane {plane!r}; choose from {', '.join(PLANES)}")
        world = PLANES[plane]
        for index_axis, (world_axis, _) in enumerate(self.index_axes_to_world_axes()):
            if world_axis == world:
                return array_axis_of_index_axis(index_axis, self.ndim)
        raise AssertionError("io_orientation always assigns every world axis")  # pragma: no cover

    def acquisition_plane(self) -> str | None:
        """The plane of the native slices (those stacked along array axis 0), ``None`` for 2D."""
        if self.ndim != 3:
            return None
        world_of_k = self.index_axes_to_world_axes()[2][0]
        return next(name for name, axis in PLANES.items() if axis == world_of_k)

    def has_same_geometry(self, other: MedicalImage, atol: float = 1e-4) -> bool:
        """Whether ``other`` lies on exactly this grid (shape, spacing, origin, direction)."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=atol)
            and np.allclose(self.origin, other.origin, atol=atol)
            and np.allclose(self.direction, other.direction, atol=atol)
        )

    # ----------------------------------------------------------------------------- derived images
    def with_array(self, array: np.ndarray, **metadata: Any) -> MedicalImage:
        """A new image on this grid holding ``array`` (same shape), keeping source headers."""
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise ValueError(f"array of shape {array.shape} does not fit an image of shape {self.array.shape}")
        return dataclasses.replace(
            self,
            array=array,
            metadata={**self.metadata, **metadata},
            direction=self.direction.copy(),
        )

    # ----------------------------------------------------------------------------- SimpleITK bridge
    def to_sitk(self):
        """This image as a ``SimpleITK.Image`` (same pixels, spacing, origin, direction)."""
        import SimpleITK as sitk

        array = self.array
        if array.dtype == np.bool_:
            array = array.astype(np.uint8)
        elif array.dtype == np.float16:
            array = array.astype(np.float32)
        itk = sitk.GetImageFromArray(np.ascontiguousarray(array))
        itk.SetSpacing(self.spacing)
        itk.SetOrigin(self.origin)
        itk.SetDirection(tuple(self.direction.ravel()))
        return itk

    @classmethod
    def from_sitk(cls, itk, **kwargs: Any) -> MedicalImage:
        """Wrap a scalar ``SimpleITK.Image`` (its pixels are copied into numpy order)."""
        import SimpleITK as sitk

        n = itk.GetDimension()
        return cls(
            array=sitk.GetArrayFromImage(itk),
            spacing=itk.GetSpacing(),
            origin=itk.GetOrigin(),
            direction=np.asarray(itk.GetDirection(), dtype=np.float64).reshape(n, n),
            **kwargs,
        )

    def __repr__(self) -> str:  # short: arrays can be huge
        return (
            f"MedicalImage(shape={self.shape}, dtype={self.array.dtype}, spacing={self.spacing}, "
            f"origin={self.origin}, orientation={self.orientation()}, path={self.path!r})"
        )
