"""The distilled set on disk: one folder that `load_dataset`, `load_from_disk` and the Hub all understand.

Layout (the same files a Hub dataset repo receives):

    README.md                         dataset card; its `configs` pin the parquet files for `load_dataset`
    data/train-00000-of-00001.parquet Image + ClassLabel (8-bit PNG images)
    dataset_dict.json, train/         `DatasetDict.save_to_disk` files for `load_from_disk`
    synthetic.safetensors             the float images before 8-bit quantisation, with labels
    statistics.safetensors            the real class statistics the set was distilled from
    distillation_config.json          the run's `DistillationConfig`, preprocessing and library versions
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import torch
from safetensors.torch import save_file

from .io_utils import atomic_path
from .versions import library_versions
from .visualization import save_image_grid, to_pil_images

PARQUET_FILE = "data/train-00000-of-00001.parquet"
FLOAT_IMAGES_FILE = "synthetic.safetensors"
CONFIG_FILE = "distillation_config.json"


def distilled_features(class_names: list[str]) -> datasets.Features:
    return datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(class_names))})


def distilled_dataset(images: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> datasets.Dataset:
    """`(N, 3, H, W)` images in `[0, 1]` and `(N,)` labels → a `datasets.Dataset` (Image + ClassLabel)."""
    return datasets.Dataset.from_dict(
        {"image": to_pil_images(images), "label": labels.tolist()}, features=distilled_features(class_names)
    )


def _card(class_names: list[str], num_images: int, backbone: str, config: Any) -> str:
    from huggingface_hub import DatasetCard, DatasetCardData

    card_data = DatasetCardData(
        task_categories=["image-classification"],
        tags=["dataset-distillation", "hf_sfm", f"method:{getattr(config, 'method', 'sfm')}"],
        size_categories=["n<1K"] if num_images < 1000 else ["1K<n<10K"],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
    )
    content = (
        f"---\n{card_data.to_yaml()}\n---\n\n"
        f"# Distilled dataset ({num_images} images, {len(class_names)} classes)\n\n"
        f"Synthesised by [hf_sfm](https://github.com/) with method `{getattr(config, 'method', 'sfm')}` "
        f"for the frozen backbone `{backbone}`, ipc={getattr(config, 'ipc', '?')}.\n\n"
        '```python\nfrom datasets import load_dataset\nds = load_dataset("<this repo or folder>")\n```\n\n'
        f"Float (unquantised) images are in `{FLOAT_IMAGES_FILE}`; the run's settings in `{CONFIG_FILE}`.\n"
    )
    return str(DatasetCard(content))


def save_distilled(
    path: str | Path,
    *,
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names: list[str],
    config: Any = None,
    statistics: Any = None,
    preprocessing: Any = None,
    backbone: str = "",
) -> Path:
    """Write the folder described in the module docstring, atomically (a kill leaves any previous one intact)."""
    dataset = distilled_dataset(images, labels, class_names)
    with atomic_path(path) as staged:
        datasets.DatasetDict({"train": dataset}).save_to_disk(str(staged))
        (staged / "data").mkdir()
        dataset.to_parquet(str(staged / PARQUET_FILE))
        save_file(
            {"images": images.float().contiguous(), "labels": labels.long().contiguous()},
            str(staged / FLOAT_IMAGES_FILE),
            metadata={"class_names": json.dumps(list(class_names)), "range": "[0, 1]", "layout": "NCHW"},
        )
        if statistics is not None:
            statistics.save(staged / "statistics.safetensors")
        run = {
            "config": config.to_dict() if hasattr(config, "to_dict") else config,
            "preprocessing": preprocessing.to_dict() if hasattr(preprocessing, "to_dict") else preprocessing,
            "backbone": backbone,
            "class_names": list(class_names),
            "versions": library_versions(),
        }
        (staged / CONFIG_FILE).write_text(json.dumps(run, indent=2, sort_keys=True))
        save_image_grid(images, labels, class_names, staged / "grid.png")
        (staged / "README.md").write_text(_card(class_names, len(labels), backbone, config))
    return Path(path)
