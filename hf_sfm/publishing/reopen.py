"""Reopen a finished run from its output folder: the distilled set, its statistics and the settings it ran with.

A run's `distilled/` folder holds everything that `Distiller.train()` produced and later steps need: the float
images before 8-bit quantisation (`synthetic.safetensors`), the real class statistics and the run's
`DistillationConfig` (`distillation_config.json`). `Distiller.from_run` reads them through `load_finished_run`, so
a recipe run can be evaluated again or given its inherited classifier from Python without training anything.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..data.statistics import STATISTICS_FILE
from ..synthesis.synthetic import SyntheticImages
from .export import CONFIG_FILE, DISTILLED_DIR, FLOAT_IMAGES_FILE

# Settings of the original run that must not carry over into the reopened one: where it wrote, what it resumed.
# The token is stored redacted, so it never carries over either.
NOT_CARRIED = ("output_dir", "resume_from_checkpoint", "statistics_path", "recompute_statistics", "hub_token")


@dataclass
class FinishedRun:
    """What a finished run left in `<output_dir>/distilled/`.

    Args:
        folder: the distilled folder.
        images: `(N, 3, S, S)` float images in `[0, 1]`, as the optimiser left them.
        labels: `(N,)` labels, class-major.
        class_names: the `C` class names, in label order.
        config: the run's `DistillationConfig` values (without where it wrote or resumed from).
        statistics_path: the run's class statistics, if the folder has them.
    """

    folder: Path
    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    config: dict[str, Any]
    statistics_path: Path | None

    def distillation_config(self, config_class: type, output_dir: str | Path, **overrides: Any) -> Any:
        """The reopened run's `config_class` (a `DistillationConfig`) from `config_values`."""
        fields = [field.name for field in dataclasses.fields(config_class)]
        return config_class(**self.config_values(output_dir, fields, **overrides))

    def config_values(self, output_dir: str | Path, fields: Iterable[str], **overrides: Any) -> dict[str, Any]:
        """Keyword arguments of a `DistillationConfig` (whose field names are `fields`) for the reopened run: the
        original settings, writing to `output_dir`, reading the saved statistics (checked against the backbone and
        data like any saved ones). Settings this version of hf_sfm does not know are dropped."""
        fields = set(fields)
        values = {key: value for key, value in self.config.items() if key in fields and key not in NOT_CARRIED}
        values["output_dir"] = str(output_dir)
        if self.statistics_path is not None:
            values["statistics_path"] = str(self.statistics_path)
        values.update(overrides)
        return values

    def synthetic(self, labels: torch.Tensor) -> SyntheticImages:
        """The images as a pixel-parameterised `SyntheticImages` whose `decode()` gives them back (to float
        precision), checked against the labels the reopening run expects (`(N,)`, class-major)."""
        if not torch.equal(self.labels, labels.to(self.labels)):
            raise ValueError(
                f"The distilled set in {self.folder} has labels {self.labels.tolist()[:12]}..., but the reopened run "
                f"expects {labels.tolist()[:12]}...: it was distilled with other classes or another ipc."
            )
        synthetic = SyntheticImages(
            num_images=len(self.images), image_size=self.images.shape[-1], parameterization="pixels",
            decorrelate_color=False,
        )  # fmt: skip
        synthetic.set_images(self.images)
        return synthetic


def load_finished_run(output_dir: str | Path, distilled_dir: str | Path | None = None) -> FinishedRun:
    """Read `<output_dir>/distilled` (or `distilled_dir`: any folder `save_distilled` wrote) back.

    Raises `FileNotFoundError` naming the missing file when the folder is not a finished run's."""
    folder = Path(distilled_dir) if distilled_dir is not None else Path(output_dir) / DISTILLED_DIR
    for name in (CONFIG_FILE, FLOAT_IMAGES_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"{folder / name} does not exist: {folder} is not the distilled folder of a finished run (a run "
                "writes it at the end, through `Distiller.save_distilled()` or recipes/distill.py)."
            )
    run = json.loads((folder / CONFIG_FILE).read_text())
    with safe_open(str(folder / FLOAT_IMAGES_FILE), framework="pt") as handle:
        images, labels = handle.get_tensor("images"), handle.get_tensor("labels")
        class_names = json.loads((handle.metadata() or {}).get("class_names", "null")) or run.get("class_names")
    statistics = folder / STATISTICS_FILE
    return FinishedRun(
        folder=folder,
        images=images.float(),
        labels=labels.long(),
        class_names=list(class_names),
        config=dict(run.get("config") or {}),
        statistics_path=statistics if statistics.is_file() else None,
    )
