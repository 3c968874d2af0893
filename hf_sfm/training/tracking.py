"""What a run leaves for people to look at: trackers, image grids and metrics files (as `Trainer` writes them)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator

from ..utils.io_utils import atomic_path, read_regular_text

TRACKER_PROJECT = "hf_sfm"  # the trackers' project; TensorBoard logs go to <output_dir>/hf_sfm


def start_trackers(accelerator: Accelerator, config: dict[str, Any], run_name: str | None = None) -> None:
    """Start the accelerator's trackers (from `report_to`, or a user's `Accelerator(log_with=...)`) once."""
    if not accelerator.log_with or accelerator.trackers:
        return
    values = {
        key: value if isinstance(value, int | float | str | bool) else str(value) for key, value in config.items()
    }
    init_kwargs = {"wandb": {"name": run_name}, "mlflow": {"run_name": run_name}} if run_name else {}
    accelerator.init_trackers(TRACKER_PROJECT, config=values, init_kwargs=init_kwargs)


def close_trackers(accelerator: Accelerator) -> None:
    """Finish the trackers (their files complete, their runs closed) without ending the process group, which the
    run still needs. Later logs, such as an `evaluate()` after training, reach `log_history`, the callbacks and
    `save_metrics`, not the closed runs."""
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers = []


def log_grid(
    accelerator: Accelerator,
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names: list[str],
    path: Path,
    step: int,
    overwrite: bool = False,
) -> None:
    """Save the grid of `(N, 3, S, S)` images to `path` and send it to every tracker that takes images."""
    from ..publishing.visualization import image_grid

    grid = image_grid(images, labels, class_names)
    with atomic_path(path, overwrite, "overwrite_output_dir=True") as staged:
        grid.save(staged, format="PNG")
    for tracker in accelerator.trackers:
        if not hasattr(tracker, "log_images"):
            continue
        if tracker.name == "tensorboard":
            tracker.log_images({"synthetic_grid": np.asarray(grid)[None]}, step=step, dataformats="NHWC")
        else:
            tracker.log_images({"synthetic_grid": [grid]}, step=step)


def format_metrics(split: str, metrics: dict[str, Any]) -> str:
    """`***** eval metrics *****` and one aligned line per metric, as `Trainer.log_metrics` prints them."""
    from transformers.trainer_pt_utils import metrics_format

    formatted = metrics_format(metrics)
    width = max((len(key) for key in formatted), default=0)
    return "\n".join([f"***** {split} metrics *****"] + [f"  {k:<{width}} = {formatted[k]}" for k in sorted(formatted)])


def write_metrics(
    output_dir: Path, split: str, metrics: dict[str, Any], combined: bool = True, overwrite: bool = False
) -> Path:
    """`<output_dir>/<split>_results.json`, merged into `all_results.json` when `combined` (atomic writes)."""
    path = Path(output_dir) / f"{split}_results.json"
    metrics = finite_or_null(metrics)
    write_json(path, metrics, overwrite)
    if combined:
        combined_path = Path(output_dir) / "all_results.json"
        merged = read_results(combined_path, overwrite)
        # A missing number (null) never replaces a recorded one.
        new = {key: value for key, value in metrics.items() if value is not None or merged.get(key) is None}
        write_json(combined_path, {**merged, **new}, overwrite)
    return path


def read_results(path: Path, overwrite: bool = False) -> dict[str, Any]:
    """The metrics already in a results file (`{}` when there is none). A damaged one (not a regular file, not a
    JSON object) is refused naming it and the fix, or, with `overwrite`, started afresh."""
    if not (path.exists() or path.is_symlink()):
        return {}
    try:
        merged = json.loads(read_regular_text(path, "results file"))
        if not isinstance(merged, dict):
            raise ValueError(f"it holds a {type(merged).__name__}, not a JSON object of metrics")
    except (OSError, ValueError) as error:
        if overwrite:
            return {}
        raise ValueError(
            f"{path} is damaged ({error}), so the new metrics cannot be merged into it. Move it away (or delete "
            "it), or set overwrite_output_dir=True to rewrite it with this run's metrics only."
        ) from error
    return merged


def write_json(path: Path, value: Any, overwrite: bool = False) -> None:
    """`value` as strict JSON: a non-finite number (a NaN loss of a run with no steps) is written as `null`, since
    `NaN` is not JSON and other readers (`jq`, browsers, `JSON.parse`) reject the whole file."""
    with atomic_path(path, overwrite, "overwrite_output_dir=True") as staged:
        staged.write_text(json.dumps(finite_or_null(value), indent=2, sort_keys=True, allow_nan=False))


def finite_or_null(value: Any) -> Any:
    """`value` with every NaN or infinity (also inside dicts and lists) replaced by `None`."""
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_null(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
