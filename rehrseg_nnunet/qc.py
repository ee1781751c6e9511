"""Quality-control pictures: through-plane views (planes containing the slice axis) side by side."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from rehrseg_nnunet.geometry import Grid, numpy_axis


@dataclass
class Panel:
    title: str
    image: sitk.Image
    label: sitk.Image | None = None
    cmap: str = "gray"
    #: fixed display range (e.g. (0, 1) for the uncertainty); None = the plane's 0.5-99.5 percentiles
    value_range: tuple[float, float] | None = None
    colorbar: bool = False


def through_plane(image: sitk.Image, reference: sitk.Image, slice_axis: int, position: int) -> np.ndarray:
    """A plane containing the slice axis, of ``image`` resampled (nearest) onto ``reference``'s grid.

    The plane is perpendicular to the first in-plane axis, at index ``position`` of it; rows run
    along the slice axis (flipped so that the slice axis points up).
    """
    if not Grid.from_image(image).matches(Grid.from_image(reference)):
        image = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0)
    array = sitk.GetArrayViewFromImage(image)  # (z, y, x); a view: no copy of the whole volume
    cut_axis = numpy_axis([a for a in range(3) if a != slice_axis][0])
    plane = np.take(array, position, axis=cut_axis)  # 2D, slice axis remains
    slice_dim = 0 if numpy_axis(slice_axis) < cut_axis else 1
    if slice_dim == 1:
        plane = plane.T
    return plane[::-1]


def save_qc_png(path: str, panels: list[Panel], slice_axis: int, position: int | None = None,
                columns: int | None = None) -> None:
    """Write one PNG with the panels side by side, label contours overlaid, on the grid of the last panel.

    Args:
        path: output PNG.
        panels: images (and optional label maps) to show; each is resampled onto the last panel's grid.
        slice_axis: the thick axis, (x, y, z) order.
        position: index along the first in-plane axis (default: the middle, or the label's centre).
        columns: panels per row (default: all in one row).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reference = panels[-1].image
    in_plane = [a for a in range(3) if a != slice_axis][0]
    if position is None:
        position = reference.GetSize()[in_plane] // 2
        for panel in panels:
            if panel.label is not None and panel.label.GetSize() == reference.GetSize():
                array = sitk.GetArrayViewFromImage(panel.label)
                if array.any():
                    position = int(round(np.argwhere(array > 0)[:, numpy_axis(in_plane)].mean()))
                break
    spacing = reference.GetSpacing()
    other = [a for a in range(3) if a not in (slice_axis, in_plane)][0]
    aspect = spacing[slice_axis] / spacing[other]
    columns = columns or len(panels)
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, panel in zip(axes.flat, panels, strict=False):  # axes.flat may hold spare axes
        plane = through_plane(panel.image, reference, slice_axis, position)
        if panel.value_range is None:
            low, high = np.percentile(plane, (0.5, 99.5))  # a few hot voxels must not wash out the view
        else:
            low, high = panel.value_range
        shown = ax.imshow(plane, cmap=panel.cmap, aspect=aspect, interpolation="nearest", vmin=low,
                          vmax=max(high, low + 1e-6))
        if panel.colorbar:
            figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=7)
        if panel.label is not None:
            labels = through_plane(panel.label, reference, slice_axis, position)
            for value in np.unique(labels):
                if value:
                    ax.contour(labels == value, levels=[0.5], linewidths=0.7, colors=[plt.cm.tab10(int(value) % 10)])
        ax.set_title(panel.title, fontsize=9)
        ax.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
