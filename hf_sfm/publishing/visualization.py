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
    with atomic_path(path, overwrite, flag) as staged:
        image_grid(images, labels, class_names, **kwargs).save(staged, format="PNG")
    return Path(path)
