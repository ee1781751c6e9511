"""Slice axis, scale factor and the one HR-grid convention used by every writer in the package.

Axes: ``slice_axis`` is an index into SimpleITK's (x, y, z) order, the order of
``image.GetSpacing()``. NumPy arrays from ``sitk.GetArrayFromImage`` are (z, y, x); use
:func:`numpy_axis` to convert.

HR grid (cell-centred): a thick slice of spacing ``s`` covers ``r`` thin slices of spacing
``s / r``. The HR grid has ``n * r`` slices, spacing ``s / r`` along the slice axis and its origin
is shifted by ``-d * s * (r - 1) / (2 r)`` (``d`` = the slice-axis direction column), so that LR
slice ``k`` is the average of HR slices ``r*k ... r*k + r - 1``. nnU-Net's own resampling uses the
same convention.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from rehrseg_nnunet.errors import RehrsegInputError

#: Largest spacing / second-largest spacing below this is "ambiguous"; largest / smallest below
#: it is "isotropic". 1.5 accepts r = 2 with some tolerance and rejects near-isotropic data.
ANISOTROPY_RATIO = 1.5
MIN_SCALE_FACTOR = 2
MAX_SCALE_FACTOR = 8
AXIS_NAMES = ("x", "y", "z")
#: largest |D^T D - I| entry accepted for an image's direction matrix D (rounding in headers, not shear)
DIRECTION_TOLERANCE = 1e-4


def numpy_axis(slice_axis: int, ndim: int = 3) -> int:
    """Convert an (x, y, z) image axis into the axis of the (z, y, x) NumPy array."""
    return ndim - 1 - slice_axis


def parse_slice_axis(value: str | int | None) -> int | None:
    """Accept ``x``/``y``/``z`` or ``0``/``1``/``2`` (image index order); ``None`` passes through."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in AXIS_NAMES:
        return AXIS_NAMES.index(text)
    if text in ("0", "1", "2"):
        return int(text)
    raise RehrsegInputError(
        f"Slice axis '{value}' is not valid: give x, y or z (or 0, 1, 2 in SimpleITK index order)."
    )


def detect_slice_axis(spacing: Sequence[float], source: str = "the image") -> int:
    """Return the axis whose spacing is largest by a clear margin.

    Args:
        spacing: voxel spacing in (x, y, z) order.
        source: file name used in error messages.

    Returns:
        The slice axis in (x, y, z) order.

    Raises:
        RehrsegInputError: for 2D, isotropic or ambiguous spacing.
    """
    spacing = [float(s) for s in spacing]
    if len(spacing) != 3:
        raise RehrsegInputError(
            f"{source} is {len(spacing)}D; REHRSeg needs 3D thick-slice volumes — convert it to a 3D image."
        )
    order = np.argsort(spacing)[::-1]
    largest, second, smallest = (spacing[i] for i in order)
    if largest / smallest < ANISOTROPY_RATIO:
        raise RehrsegInputError(
            f"{source} has near-isotropic spacing {tuple(round(s, 3) for s in spacing)}: there is no thick "
            f"slice axis to super-resolve; use thick-slice data (largest spacing >= {ANISOTROPY_RATIO}x the smallest)."
        )
    if largest / second < ANISOTROPY_RATIO:
        raise RehrsegInputError(
            f"{source} has two similarly large spacings {tuple(round(s, 3) for s in spacing)}: the slice axis "
            f"is ambiguous; pass --slice-axis x|y|z."
        )
    return int(order[0])


def infer_scale_factor(spacing: Sequence[float], slice_axis: int, source: str = "the image") -> int:
    """r = round(slice spacing / mean in-plane spacing), checked to lie in 2..8."""
    in_plane = [float(s) for i, s in enumerate(spacing) if i != slice_axis]
    ratio = float(spacing[slice_axis]) / float(np.mean(in_plane))
    scale_factor = int(round(ratio))
    check_scale_factor(scale_factor, source, f" (slice spacing / in-plane spacing = {ratio:.2f})")
    return scale_factor


def scale_factor_rule(spacing: Sequence[float], slice_axis: int) -> str:
    """How r follows from a spacing, for logs: ``r = 5 = round(4 / 0.75, mean in-plane spacing)``."""
    thick = float(spacing[slice_axis])
    in_plane = float(np.mean([float(s) for i, s in enumerate(spacing) if i != slice_axis]))
    return f"r = {int(round(thick / in_plane))} = round({thick:g} / {in_plane:g}, mean in-plane spacing)"


def check_direction(direction: Sequence[float], source: str) -> None:
    """An image's direction matrix must be orthonormal (a rotation or reflection, no shear or scaling).

    The HR grid, the slice axis and nnU-Net's resampling assume orthogonal axes; ITK keeps a sheared matrix
    from formats such as MetaImage (NIfTI coerces it silently).

    Args:
        direction: row-major 3x3 direction matrix (``image.GetDirection()``).
        source: the file, for the message.

    Raises:
        RehrsegInputError: one line naming the file and the fix.
    """
    matrix = np.asarray(direction, dtype=float)
    if matrix.size != 9:
        return  # not 3D: the dimension checks say so
    matrix = matrix.reshape(3, 3)
    deviation = float(np.abs(matrix.T @ matrix - np.eye(3)).max())
    if not np.isfinite(deviation) or deviation > DIRECTION_TOLERANCE:
        raise RehrsegInputError(
            f"{source} has a non-orthonormal direction matrix {tuple(round(float(v), 4) for v in matrix.ravel())} "
            f"(sheared or scaled axes, |D^T D - I| up to {deviation:.2g}); resample it onto a grid with orthogonal "
            f"axes (e.g. a rotation-only direction) before using it.")


def check_scale_factor(scale_factor: int, source: str = "the data", detail: str = "") -> None:
    if not MIN_SCALE_FACTOR <= int(scale_factor) <= MAX_SCALE_FACTOR:
        raise RehrsegInputError(
            f"Scale factor {scale_factor} for {source}{detail} is outside {MIN_SCALE_FACTOR}..{MAX_SCALE_FACTOR}; "
            f"pass --scale-factor with an integer in that range."
        )


@dataclass(frozen=True)
class Grid:
    """Geometry of a 3D image: size, spacing and origin in (x, y, z) order, direction row-major 3x3."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def from_image(cls, image: sitk.Image | sitk.ImageFileReader) -> Grid:
        """The grid of an image, or of a file reader after ``ReadImageInformation`` (header only)."""
        return cls(tuple(int(v) for v in image.GetSize()), tuple(image.GetSpacing()),
                   tuple(image.GetOrigin()), tuple(image.GetDirection()))

    def direction_column(self, axis: int) -> np.ndarray:
        """Physical direction of index axis ``axis`` (a column of the direction matrix)."""
        return np.asarray(self.direction, dtype=float).reshape(3, 3)[:, axis]

    def refine(self, slice_axis: int, scale_factor: int) -> Grid:
        """The HR grid of this (LR) grid: ``n*r`` slices of spacing ``s/r``, cell-centred origin."""
        r = int(scale_factor)
        s = self.spacing[slice_axis]
        shift = -self.direction_column(slice_axis) * s * (r - 1) / (2 * r)
        size = list(self.size)
        size[slice_axis] *= r
        spacing = list(self.spacing)
        spacing[slice_axis] = s / r
        return Grid(tuple(size), tuple(spacing), tuple(np.asarray(self.origin) + shift), self.direction)

    def coarsen(self, slice_axis: int, scale_factor: int) -> Grid:
        """The LR grid whose :meth:`refine` is this grid (size along the slice axis must divide by r)."""
        r = int(scale_factor)
        if self.size[slice_axis] % r:
            raise RehrsegInputError(
                f"{self.size[slice_axis]} slices along axis {AXIS_NAMES[slice_axis]} do not divide by r = {r}; "
                f"crop or pad the HR image to a multiple of r."
            )
        h = self.spacing[slice_axis]
        shift = self.direction_column(slice_axis) * h * (r - 1) / 2
        size = list(self.size)
        size[slice_axis] //= r
        spacing = list(self.spacing)
        spacing[slice_axis] = h * r
        return Grid(tuple(size), tuple(spacing), tuple(np.asarray(self.origin) + shift), self.direction)

    def image_from_array(self, array: np.ndarray) -> sitk.Image:
        """Wrap a (z, y, x) array (or (z, y, x, c) for vectors is not supported) in this geometry."""
        expected = tuple(reversed(self.size))
        if tuple(array.shape) != expected:
            raise ValueError(f"Array of shape {array.shape} does not match the grid (expected {expected}).")
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(self.spacing)
        image.SetOrigin(tuple(float(v) for v in self.origin))
        image.SetDirection(self.direction)
        return image

    def matches(self, other: Grid, tolerance: float = 1e-3, spacing_rtol: float | None = None,
                origin_atol: float | None = None, direction_atol: float | None = None) -> bool:
        """Same size and the same physical placement.

        Args:
            other: the grid to compare with.
            tolerance: default of the three tolerances: spacing relative, origin in units of the largest
                spacing, direction absolute.
            spacing_rtol, origin_atol (mm), direction_atol: set one tolerance explicitly.
        """
        # explicit tolerances are exact bounds; the default adds numpy's relative 1e-5 for origin and direction
        relative = 0.0 if any(t is not None for t in (spacing_rtol, origin_atol, direction_atol)) else 1e-5
        spacing_rtol = tolerance if spacing_rtol is None else spacing_rtol
        origin_atol = tolerance * max(self.spacing) if origin_atol is None else origin_atol
        direction_atol = tolerance if direction_atol is None else direction_atol
        return (tuple(self.size) == tuple(other.size)
                and np.allclose(self.spacing, other.spacing, rtol=spacing_rtol, atol=0)
                and np.allclose(self.origin, other.origin, rtol=relative, atol=origin_atol)
                and np.allclose(self.direction, other.direction, rtol=relative, atol=direction_atol))


def check_thick_slice_spacing(spacing: Sequence[float], source: str, slice_axis: int, thick_spacing: float,
                              scale_factor: int, model: str) -> None:
    """The rule of :func:`check_thick_slice_header` on a spacing already read (``source`` names the image)."""
    in_plane = max(s for i, s in enumerate(spacing) if i != slice_axis)
    hr_spacing = thick_spacing / scale_factor
    if round(spacing[slice_axis] / hr_spacing) != scale_factor or in_plane * 1.5 > spacing[slice_axis]:
        low, high = (scale_factor - 0.5) * hr_spacing, (scale_factor + 0.5) * hr_spacing
        raise RehrsegInputError(
            f"{source} has spacing {tuple(round(s, 3) for s in spacing)} mm but {model} was trained for "
            f"{thick_spacing:.3g} mm slices along {AXIS_NAMES[slice_axis]} (r = {scale_factor}: {low:.3g}-{high:.3g} "
            f"mm accepted); resample or reorient it, or use a model trained for this geometry.")


@dataclass(frozen=True)
class DatasetGeometry:
    """What all cases of a dataset share: the slice axis (x, y, z order) and the scale factor r."""

    slice_axis: int
    scale_factor: int
    lr_spacing: tuple[float, float, float]

    @property
    def hr_spacing(self) -> tuple[float, float, float]:
        spacing = list(self.lr_spacing)
        spacing[self.slice_axis] /= self.scale_factor
        return tuple(spacing)


def determine_geometry(grids: Sequence[tuple[str, Grid]], slice_axis: int | None = None,
                       scale_factor: int | None = None) -> DatasetGeometry:
    """Slice axis and r shared by all cases (explicit options win), or a one-line error naming the odd file."""
    found: list[tuple[str, int, int]] = []
    for path, grid in grids:
        axis = slice_axis if slice_axis is not None else detect_slice_axis(grid.spacing, path)
        if scale_factor is not None:
            check_scale_factor(scale_factor, path)
            r = int(scale_factor)
        else:
            r = infer_scale_factor(grid.spacing, axis, path)
        found.append((path, axis, r))
    first_path, first_axis, first_r = found[0]
    for path, axis, r in found[1:]:
        if axis != first_axis:
            raise RehrsegInputError(
                f"{path} has its thick slices along {AXIS_NAMES[axis]} but {first_path} along "
                f"{AXIS_NAMES[first_axis]}; "
                f"all cases must share the slice axis — reorient the odd case."
            )
        if r != first_r:
            raise RehrsegInputError(
                f"{path} gives scale factor {r} but {first_path} gives {first_r}; all cases must share r — "
                f"resample the odd case or pass --scale-factor."
            )
    return DatasetGeometry(first_axis, first_r, tuple(grids[0][1].spacing))
