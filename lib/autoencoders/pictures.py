"""The figures of the autoencoder experiments, as PNG files drawn on bare matplotlib
Figures (`lib.core.plots.subplots`), never through pyplot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lib.core import plots


def digit_rows(
    rows: Sequence[tuple[str, np.ndarray]],
    path: str | Path,
    title: str = "",
    image_shape: Sequence[int] | None = None,
) -> None:
    """Rows of flattened images of `image_shape` (default square and grey), each row named:
    the test images, then their reconstructions."""
    n = len(rows[0][1])
    fig, axes = plots.subplots(
        len(rows), n, figsize=(0.8 * n + 1.4, 0.85 * len(rows) + 0.5), squeeze=False
    )
    for r, (name, images) in enumerate(rows):
        images = plots.as_images(images, image_shape)
        for c in range(n):
            ax = axes[r, c]
            plots.show(ax, images[c])
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def image_grid(
    images: np.ndarray,
    path: str | Path,
    title: str = "",
    signed: bool = False,
    image_shape: Sequence[int] | None = None,
) -> None:
    """Flattened images of `image_shape` (default square and grey) on a grid: samples in
    [0, 1], or with `signed` filters (weights), each scaled to its own largest magnitude,
    zero grey."""
    images = plots.as_images(images, image_shape)
    if signed:
        scale = np.abs(images).reshape(len(images), -1).max(axis=1)
        images = images / np.where(scale > 0, scale, 1.0).reshape(-1, *[1] * (images.ndim - 1))
    n = len(images)
    cols = int(np.ceil(np.sqrt(n)))
    rows = -(-n // cols)
    padded = np.full((rows * cols, *images.shape[1:]), np.nan if images.ndim == 3 else 1.0)
    padded[:n] = images
    canvas = plots.mosaic(padded.reshape(rows, cols, *images.shape[1:]))
    fig, ax = plots.subplots(figsize=(0.28 * cols + 1, 0.28 * rows + 1.2))
    plots.show(ax, canvas, signed=signed)
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def codes_scatter(
    panels: Sequence[tuple[str, np.ndarray]], labels: np.ndarray, path: str | Path
) -> None:
    """2-D codes side by side, one panel each, coloured by the digit they encode."""
    fig, axes = plots.subplots(1, len(panels), figsize=(5.2 * len(panels), 5), squeeze=False)
    for ax, (name, codes) in zip(axes[0], panels, strict=True):
        codes = np.asarray(codes)
        points = ax.scatter(codes[:, 0], codes[:, 1], c=labels, cmap="tab10", s=2, alpha=0.7,
                            vmin=-0.5, vmax=9.5)  # fmt: skip
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(points, ax=list(axes[0]), ticks=range(10), label="digit")
    fig.savefig(path, dpi=110)
