"""Pictures of the synthetic set: one row per class, labelled, saved as PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch

from ..evaluation.results import BASELINES
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


# ---------------------------------------------------------------------------------------------- the step curve


def step_curves(log_history: list[dict], steps: list[int] | None = None) -> dict[str, list[tuple[int, float]]]:
    """`{metric: [(step, value), …]}` of the synthetic set's top-1 `eval_*accuracy` on every backbone (not `_std`,
    `top5_` or a baseline's: one scale, one set) in a `TrainerState.log_history`.

    `steps`: only these steps (the in-training evaluations); at a step evaluated twice (the final evaluation of a
    recipe on its test split runs at the last step too) the first entry, the in-training one, counts."""
    curves: dict[str, dict[int, float]] = {}
    for entry in log_history:
        step = entry.get("step")
        if step is None or (steps is not None and step not in steps):
            continue
        for key, value in entry.items():
            top1 = key.startswith("eval_") and key.endswith("accuracy") and "top5_" not in key
            baseline = any(f"_{name}_" in key for name in BASELINES)  # a final evaluation's, not the set's
            if top1 and not baseline and isinstance(value, int | float):
                curves.setdefault(key, {}).setdefault(int(step), float(value))
    return {key: sorted(points.items()) for key, points in curves.items()}


def save_step_curve(
    log_history: list[dict],
    path: str | Path,
    *,
    steps: list[int] | None = None,
    kept_step: int | None = None,
    title: str = "Accuracy of the synthetic set against steps",
    overwrite: bool = False,
    flag: str = "overwrite=True",
) -> Path:
    """Plot each `eval_*accuracy` curve of `log_history` (the distillation backbone's and every eval model's)
    against steps, mark `kept_step`, and save the PNG at `path` atomically. Needs matplotlib (an optional extra)."""
    curves = step_curves(log_history, steps)
    if not curves:
        raise ValueError("The log history holds no eval_*accuracy values: the run had no in-training evaluations.")
    try:
        from matplotlib.figure import Figure  # no pyplot: no global backend or figure state is touched
    except ImportError as error:
        raise ImportError(
            "The step curve is drawn with matplotlib, which hf_sfm does not require: `pip install matplotlib`."
        ) from error
    import io

    figure = Figure(figsize=(8.0, 4.0), dpi=120)
    axes = figure.subplots()
    for key, points in curves.items():
        axes.plot([s for s, _ in points], [100 * v for _, v in points], marker="o", label=key)
    if kept_step is not None:
        axes.axvline(kept_step, color="black", linestyle="--", linewidth=1, label=f"kept step {kept_step}")
    axes.set_xlabel("step")
    axes.set_ylabel("top-1 accuracy (%)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the curves, not on them
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    buffer.seek(0)
    with PIL.Image.open(buffer) as picture:
        return save_png(picture.convert("RGB"), path, overwrite, flag)
