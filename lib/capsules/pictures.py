"""The pictures of Sabour, Frosst and Hinton, "Dynamic Routing Between Capsules" (NIPS
2017), as PNG files drawn on bare matplotlib Figures (`lib.core.plots.subplots`), never
through pyplot: test digits beside their reconstructions from the digit capsules, and
Figure 4, each dimension of a digit capsule perturbed and decoded."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lib.core import plots


def digit_grid(
    images: np.ndarray,
    path: str | Path,
    row_labels: Sequence[str] = (),
    column_labels: Sequence[str] = (),
    title: str = "",
    image_shape: Sequence[int] | None = None,
) -> None:
    """A grid of images (rows, columns, pixels), each of `image_shape` (default square and
    grey, darker larger), each row and column optionally named; drawn as one image, so
    that large grids (Figure 4's 16 x 11) stay quick."""
    images = plots.as_images(images, image_shape, batch_dims=2)
    rows, cols, side = images.shape[:3]
    gap = 2
    pitch = side + gap
    fig, ax = plots.subplots(figsize=(0.55 * cols + 1.3, 0.55 * rows + 0.8))
    plots.show(ax, plots.mosaic(images, gap))
    centres = lambda n: [k * pitch + (side - 1) / 2 for k in range(n)]
    ax.set_xticks(centres(len(column_labels)), column_labels, fontsize=7)
    ax.xaxis.tick_top()
    ax.set_yticks(centres(len(row_labels)), row_labels, fontsize=7)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=9, pad=14 if column_labels else 4)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def reconstructions(
    images: np.ndarray,
    rebuilt: np.ndarray,
    labels: Sequence[int],
    predicted: Sequence[int],
    path: str | Path,
    image_shape: Sequence[int] | None = None,
) -> None:
    """Test digits (top row) over their reconstructions from the predicted class's capsule,
    each column named (label, prediction), as the paper's Figure 3."""
    columns = [f"{y}, as {p}" for y, p in zip(labels, predicted, strict=True)]
    grid = np.stack([np.asarray(images).reshape(len(columns), -1),
                     np.asarray(rebuilt).reshape(len(columns), -1)])  # fmt: skip
    digit_grid(grid, path, ("input", "rebuilt"), columns,
               "reconstructions from the digit capsules (label, as predicted)",
               image_shape)  # fmt: skip


def perturbations(
    decoded: np.ndarray,
    deltas: Sequence[float],
    path: str | Path,
    title: str = "",
    image_shape: Sequence[int] | None = None,
) -> None:
    """Figure 4: row d the decoded capsule with dimension d moved by each of `deltas`."""
    decoded = np.asarray(decoded)
    digit_grid(
        decoded,
        path,
        [f"dim {d}" for d in range(decoded.shape[0])],
        [f"{x:+.2f}" for x in deltas],
        title,
        image_shape,
    )
