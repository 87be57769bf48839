"""Figures written as PNG files. They are drawn on bare `matplotlib.figure.Figure`s, never
through pyplot, so importing this leaves matplotlib's backend alone (a notebook keeps its
inline plots) and no figure is left open."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure


def subplots(nrows: int = 1, ncols: int = 1, figsize=None, **kwargs):
    """(figure, axes) as `pyplot.subplots` gives them, on a Figure pyplot does not track."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def accuracy_curves(
    history: Sequence[Mapping], path: str | Path, title: str = "", book_accuracy: float = 0.0
) -> None:
    """Validation (and training) accuracy per epoch; test accuracy where it was scored."""
    epochs = [h["epoch"] for h in history]
    fig, ax = subplots(figsize=(7, 4.2))
    ax.plot(epochs, [100 * h["val_accuracy"] for h in history], "-o", ms=3, label="validation")
    if all("train_accuracy" in h for h in history):
        ax.plot(
            epochs,
            [100 * h["train_accuracy"] for h in history],
            "-",
            alpha=0.5,
            label="training (mini-batches)",
        )
    tested = [h for h in history if "test_accuracy" in h]
    if tested:
        ax.plot(
            [h["epoch"] for h in tested],
            [100 * h["test_accuracy"] for h in tested],
            "s",
            ms=4,
            label="test (at new best validation)",
        )
    if book_accuracy:
        ax.axhline(book_accuracy, color="grey", ls="--", lw=1, label=f"book: {book_accuracy}%")
    low = min(100 * h["val_accuracy"] for h in history)
    ax.set_ylim(max(low - 0.5, 90.0 if low > 90 else low - 1), 100)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def filter_grid(kernel: np.ndarray, path: str | Path, title: str = "") -> None:
    """The first convolutional layer's filters (k, k, 1, F) as a grid of k x k images.

    Darker is a larger weight, as in the book's figure of the learned 5x5 filters.
    """
    kernel = np.asarray(kernel)
    filters = kernel[:, :, 0, :].transpose(2, 0, 1)
    n = filters.shape[0]
    cols = min(10, n)
    rows = -(-n // cols)
    fig, axes = subplots(rows, cols, figsize=(cols * 0.8, rows * 0.8 + 0.4))
    for i, ax in enumerate(np.atleast_1d(axes).ravel()):
        ax.set_axis_off()
        if i < n:
            ax.imshow(filters[i], cmap="Greys", interpolation="nearest")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def ladder(rows: Sequence[Mapping], path: str | Path, title: str = "") -> None:
    """The chapter-6 table as a figure: per rung the book's accuracy, each seed's, and
    their mean (rows as `launch.ladder.collect` makes them: net, book, test in [0, 1])."""
    fig, ax = subplots(figsize=(8, 4.2))
    names = [r["net"] for r in rows]
    for i, r in enumerate(rows):
        if r["book"] is not None:  # the book's numbers are MNIST's
            ax.plot([i - 0.3, i + 0.3], [r["book"]] * 2, color="grey", lw=2, label="book")
        ours = 100 * np.asarray(r["test"])
        if len(ours):
            jitter = np.linspace(-0.12, 0.12, len(ours)) if len(ours) > 1 else np.zeros(1)
            ax.plot(
                i + jitter, ours, "o", ms=4, color="tab:blue", alpha=0.6, label="ours: each seed"
            )
            ax.plot(
                [i - 0.2, i + 0.2], [ours.mean()] * 2, color="tab:red", lw=2, label="ours: mean"
            )
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title or "Nielsen's chapter-6 ladder: the book and our runs")
    ax.grid(alpha=0.3, axis="y")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))  # one entry per label
    ax.legend(unique.values(), unique.keys(), loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def as_images(x: np.ndarray, image_shape: Sequence[int] | None = None, batch_dims: int = 1):
    """Flattened images (..., pixels), `batch_dims` leading axes, as (..., H, W) or
    (..., H, W, C): `image_shape` (H, W, C) (one channel dropped), or square and grey
    when None."""
    x = np.asarray(x)
    lead = x.shape[:batch_dims]
    if image_shape is None:
        side = round(np.sqrt(np.prod(x.shape[batch_dims:])))
        image_shape = (side, side)
    shape = tuple(image_shape)
    if len(shape) == 3 and shape[-1] == 1:
        shape = shape[:2]
    return x.reshape(*lead, *shape)


def mosaic(images: np.ndarray, gap: int = 1) -> np.ndarray:
    """Images (rows, cols, H, W) or (rows, cols, H, W, C) as one canvas, `gap` pixels apart:
    one picture for a large grid, quick to draw. Grey gaps are NaN (drawn blank), colour
    gaps white."""
    images = np.asarray(images, dtype=np.float32)
    rows, cols, h, w = images.shape[:4]
    colour = images.shape[4:]
    canvas = np.full(
        (rows * (h + gap) - gap, cols * (w + gap) - gap, *colour), 1.0 if colour else np.nan
    )
    for r in range(rows):
        for c in range(cols):
            canvas[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = images[
                r, c
            ]
    return canvas


def show(ax, image: np.ndarray, signed: bool = False) -> None:
    """An image (H, W) or (H, W, C) in [0, 1], dark on light if grey; with `signed`, values
    in [-1, 1] (weights), grey zero."""
    image = np.squeeze(image)
    if image.ndim == 3:  # colour: no colour map, values clipped to [0, 1]
        ax.imshow(np.clip((image + 1) / 2 if signed else image, 0, 1), interpolation="nearest")
    elif signed:
        ax.imshow(image, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
    else:
        ax.imshow(image, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")


def _digit(ax, image: np.ndarray, title: str = "", cmap: str = "gray_r", low: float = 0.0) -> None:
    ax.imshow(np.squeeze(image), cmap=cmap, vmin=low, vmax=1.0, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def adversarial_examples(
    shown: Mapping[str, np.ndarray], path: str | Path, title: str = ""
) -> None:
    """Rows: clean images, the perturbation (amplified to the full grey range), the
    adversarial images with the net's label, and Szegedy's minimum-distortion images."""
    clean, adv = shown["clean"], shown["adversarial"]
    n = len(clean)
    fig, axes = subplots(4, n, figsize=(1.3 * n, 6.0), squeeze=False)
    for i in range(n):
        perturbation = adv[i] - clean[i]
        scale = max(float(np.abs(perturbation).max()), 1e-12)
        _digit(axes[0, i], clean[i], "clean")
        _digit(axes[1, i], perturbation / scale, "perturbation", cmap="RdBu", low=-1.0)
        _digit(axes[2, i], adv[i], f"FGSM -> {shown['adversarial_labels'][i]}")
        _digit(axes[3, i], shown["minimum"][i], f"min. -> {shown['minimum_labels'][i]}")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def image_row(images: np.ndarray, titles: Sequence[str], path: str | Path, title: str = "") -> None:
    """Images side by side, each with its title."""
    fig, axes = subplots(1, len(images), figsize=(1.3 * len(images), 1.9), squeeze=False)
    for ax, image, label in zip(axes[0], images, titles, strict=True):
        _digit(ax, image, label)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def error_vs_eps(summary: Mapping, path: str | Path, title: str = "") -> None:
    """A blind-spot study's test error under attack against the budget eps, one colour per
    net, FGSM solid and PGD dashed, the clean error at eps 0 (`summary` as
    experiments.adversarial writes it)."""
    eps = [0.0, *map(float, summary["eps"])]
    fig, ax = subplots(figsize=(6.4, 4.2))
    for i, (name, r) in enumerate(summary["targets"].items()):
        colour = f"C{i}"
        for attack, style in (("fgsm", "-"), ("pgd", "--")):
            errors = [r["clean_error"], *(r[attack][str(e)] for e in summary["eps"])]
            ax.plot(eps, [100 * e for e in errors], style, color=colour, marker="o",
                    markersize=3, label=f"{name}, {attack.upper()}")  # fmt: skip
    ax.set_xlabel("eps (L-inf budget, pixels in [0, 1])")
    ax.set_ylabel("test error under attack (%)")
    ax.set_ylim(0, 101)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
