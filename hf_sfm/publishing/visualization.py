"""Pictures of the synthetic set: one row per class, labelled, saved as PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch

from ..utils.io_utils import atomic_path


def to_pil_images(images: torch.Tensor) -> list[PIL.Image.Image]:
    """`(N, 3, H, W)` in `[0, 1]` → 8-bit RGB PIL images (round to nearest)."""
    arrays = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [PIL.Image.fromarray(np.ascontiguousarray(array), mode="RGB") for array in arrays]


def image_grid(
    images: torch.Tensor, labels: torch.Tensor, class_names: list[str], max_columns: int = 10, cell: int = 96
) -> PIL.Image.Image:
    """A grid with one row per class (up to `max_columns` images each) and the class name over each row."""
    pil_images = to_pil_images(images)
    num_classes = len(class_names)
    per_class = [[image for image, label in zip(pil_images, labels.tolist()) if label == c] for c in range(num_classes)]
    columns = max(1, min(max_columns, max(len(row) for row in per_class)))
    label_height, gap = 14, 2
    row_height = cell + label_height + gap
    grid = PIL.Image.new("RGB", (columns * (cell + gap) + gap, num_classes * row_height + gap), "white")
    draw = PIL.ImageDraw.Draw(grid)
    for row, images_of_class in enumerate(per_class):
        top = gap + row * row_height
        draw.text((gap, top), str(class_names[row])[:40], fill="black")
        for column, image in enumerate(images_of_class[:columns]):
            resized = image.resize((cell, cell), PIL.Image.Resampling.NEAREST)
            grid.paste(resized, (gap + column * (cell + gap), top + label_height))
    return grid


def save_image_grid(
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names: list[str],
    path: str | Path,
    overwrite: bool = False,
    flag: str = "overwrite=True",
    **kwargs,
) -> Path:
    """Save the labelled grid as a PNG at `path`; an existing file hf_sfm did not write is refused (see `io_utils`)."""
    return save_png(image_grid(images, labels, class_names, **kwargs), path, overwrite, flag)


def save_png(picture, path: str | Path, overwrite: bool = False, flag: str = "overwrite=True") -> Path:
    """Write a PIL picture as a PNG at `path`, atomically; an existing file hf_sfm did not write is refused."""
    with atomic_path(path, overwrite, flag) as staged:
        picture.save(staged, format="PNG")
    return Path(path)


def comparison_grid(
    starting_images: torch.Tensor,
    distilled_images: torch.Tensor,
    labels: torch.Tensor,
    class_names: list[str],
    max_columns: int = 10,
    cell: int = 96,
) -> PIL.Image.Image:
    """What distillation did to each class: classes across (wrapping after `max_columns`), and per class its first
    starting image, its distilled image and their difference amplified (grey = unchanged; `0.5 + a · (distilled -
    start)` with one gain `a` for the whole grid, chosen so the largest change reaches black or white).

    Both image sets are `(N, 3, H, W)` in `[0, 1]` in the same order (`labels` `(N,)`).
    """
    if starting_images.shape != distilled_images.shape:
        raise ValueError(
            f"Starting and distilled images differ in shape: {tuple(starting_images.shape)} vs "
            f"{tuple(distilled_images.shape)}."
        )
    starting_images, distilled_images = starting_images.detach().float().cpu(), distilled_images.detach().float().cpu()
    difference = distilled_images - starting_images
    largest = float(difference.abs().max())
    gain = 0.5 / largest if largest > 0 else 1.0
    amplified = (0.5 + gain * difference).clamp(0, 1)
    firsts = [int((labels == c).nonzero()[0]) for c in range(len(class_names)) if bool((labels == c).any())]
    shown = [c for c in range(len(class_names)) if bool((labels == c).any())]
    rows = [("start", starting_images), ("distilled", distilled_images), (f"diff x{gain:.0f}", amplified)]
    columns = max(1, min(max_columns, len(firsts)))
    bands = -(-len(firsts) // columns)
    label_height, gap, margin = 14, 2, 62
    band_height = label_height + len(rows) * (cell + gap) + gap
    grid = PIL.Image.new("RGB", (margin + columns * (cell + gap) + gap, bands * band_height + gap), "white")
    draw = PIL.ImageDraw.Draw(grid)
    for position, (index, c) in enumerate(zip(firsts, shown)):
        band, column = divmod(position, columns)
        left, top = margin + gap + column * (cell + gap), gap + band * band_height
        draw.text((left, top), str(class_names[c])[: max(4, cell // 6)], fill="black")
        for row, (name, images) in enumerate(rows):
            y = top + label_height + row * (cell + gap)
            if column == 0:
                draw.text((gap, y + cell // 2 - 6), name, fill="black")
            image = to_pil_images(images[index : index + 1])[0].resize((cell, cell), PIL.Image.Resampling.NEAREST)
            grid.paste(image, (left, y))
    return grid


def save_comparison_grid(
    starting_images: torch.Tensor,
    distilled_images: torch.Tensor,
    labels: torch.Tensor,
    class_names: list[str],
    path: str | Path,
    overwrite: bool = False,
    flag: str = "overwrite=True",
    **kwargs,
) -> Path:
    """Save `comparison_grid` as a PNG at `path`; an existing file hf_sfm did not write is refused (see `io_utils`)."""
    picture = comparison_grid(starting_images, distilled_images, labels, class_names, **kwargs)
    return save_png(picture, path, overwrite, flag)
