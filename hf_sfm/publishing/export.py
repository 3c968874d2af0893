"""The distilled set on disk: one folder that `load_dataset`, `load_from_disk` and the Hub all understand.

Layout (the same files a Hub dataset repo receives):

    README.md                         dataset card; its `configs` pin the parquet files for `load_dataset`
    data/train-00000-of-00001.parquet Image + ClassLabel (8-bit PNG images)
    dataset_dict.json, train/         `DatasetDict.save_to_disk` files for `load_from_disk`
    synthetic.safetensors             the float images before 8-bit quantisation, with labels
    statistics.safetensors            the real class statistics the set was distilled from
    statistics-<backbone>.safetensors the other backbones' statistics (a set distilled against several)
    distillation_config.json          the run's `DistillationConfig`, preprocessing and library versions
    grid.png                          the images, one row per class (shown in the card)

`hf_sfm.publishing.hub.push_distilled` uploads this folder as it is, in one commit. `save_classifier` writes the
folder of a classifier (`save_pretrained` + image processor + model card) that
`hf_sfm.publishing.hub.push_classifier` uploads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import torch
from safetensors.torch import save_file

from ..data.statistics import STATISTICS_FILE, companion_statistics_path
from ..utils.io_utils import atomic_path
from ..utils.versions import library_versions, provenance_metadata
from .cards import Metrics, dataset_card, model_card
from .hub import folder_files
from .run_record import portable_config, portable_name
from .visualization import save_image_grid, to_pil_images

PARQUET_FILE = "data/train-00000-of-00001.parquet"
FLOAT_IMAGES_FILE = "synthetic.safetensors"
CONFIG_FILE = "distillation_config.json"
DISTILLED_DIR = "distilled"  # `<output_dir>/distilled`: where a run saves this folder by default


def distilled_features(class_names: list[str]) -> datasets.Features:
    return datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(class_names))})


def distilled_dataset(images: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> datasets.Dataset:
    """`(N, 3, H, W)` images in `[0, 1]` and `(N,)` labels → a `datasets.Dataset` (Image + ClassLabel)."""
    return datasets.Dataset.from_dict(
        {"image": to_pil_images(images), "label": labels.tolist()}, features=distilled_features(class_names)
    )


def _dataset_info(dataset: datasets.Dataset, parquet_path: Path) -> datasets.DatasetInfo:
    """Features, the train split's size and the parquet size: the card's `dataset_info`, as `push_to_hub` writes it."""
    info = dataset.info.copy()
    info.splits = datasets.SplitDict()
    info.splits.add(datasets.SplitInfo(name="train", num_bytes=dataset.data.nbytes, num_examples=len(dataset)))
    info.download_size = parquet_path.stat().st_size
    info.dataset_size = dataset.data.nbytes
    return info


def save_distilled(
    path: str | Path,
    *,
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names: list[str],
    config: Any = None,
    statistics: Any = None,
    other_statistics: dict[str, Any] | None = None,
    preprocessing: Any = None,
    backbone: str = "",
    backbone_revision: str | None = None,
    metrics: Metrics | None = None,
    overwrite: bool = False,
    flag: str = "overwrite=True",
    **card_kwargs: Any,
) -> Path:
    """Write the folder described in the module docstring, atomically (a kill leaves any previous one intact).

    An existing folder at `path` is replaced only if hf_sfm wrote it and it is unchanged (or `overwrite`; `flag`
    names the argument for the error): a folder of the user's is never deleted.

    `metrics` (from `Distiller.evaluate()`) and `card_kwargs` go to `hf_sfm.publishing.cards.dataset_card` (`repo_id`,
    `classifier_repo_id`, `source_dataset`, `license`, `pretty_name`, `template_path`); the card is rendered last so
    it lists the folder's files.
    """
    dataset = distilled_dataset(images, labels, class_names)
    seed = config.get("seed") if isinstance(config, dict) else getattr(config, "seed", None)
    with atomic_path(path, overwrite, flag) as staged:
        datasets.DatasetDict({"train": dataset}).save_to_disk(str(staged))
        (staged / "data").mkdir()
        dataset.to_parquet(str(staged / PARQUET_FILE))
        save_file(
            {"images": images.float().contiguous(), "labels": labels.long().contiguous()},
            str(staged / FLOAT_IMAGES_FILE),
            metadata={
                "class_names": json.dumps(list(class_names)),
                "range": "[0, 1]",
                "layout": "NCHW",
                **provenance_metadata(seed),
            },
        )
        if statistics is not None:
            statistics.save(staged / STATISTICS_FILE)
        for short_name, each in (other_statistics or {}).items():
            each.save(companion_statistics_path(staged / STATISTICS_FILE, short_name))
        run = {  # published with the set: no local paths (`run_record.portable_name`)
            "config": portable_config(config.to_dict() if hasattr(config, "to_dict") else config or {}),
            "preprocessing": preprocessing.to_dict() if hasattr(preprocessing, "to_dict") else preprocessing,
            "backbone": portable_name(backbone),
            "backbone_revision": backbone_revision,
            "class_names": list(class_names),
            "seed": seed,
            "versions": library_versions(),
        }
        if card_kwargs.get("record") is not None:  # the run record the card is written from (`run_record.py`)
            run["run"] = card_kwargs["record"].to_dict()
        if card_kwargs.get("selection"):  # the kept step and the split it was chosen on (`cards.selection_text`)
            run["selection"] = dict(card_kwargs["selection"])
        (staged / CONFIG_FILE).write_text(json.dumps(run, indent=2, sort_keys=True))
        save_image_grid(images, labels, class_names, staged / "grid.png")
        card = dataset_card(
            class_names=list(class_names),
            num_images=len(labels),
            config=config,
            backbone=backbone,
            backbone_revision=backbone_revision,
            dataset_info=_dataset_info(dataset, staged / PARQUET_FILE),
            files=[*folder_files(staged), "README.md"],
            preprocessing=run["preprocessing"],
            versions=run["versions"],
            metrics=metrics,
            **card_kwargs,
        )
        (staged / "README.md").write_text(str(card), encoding="utf-8")
    return Path(path)


def save_classifier(
    path: str | Path,
    model: Any,
    image_processor: Any = None,
    *,
    metrics: Metrics | None = None,
    repo_id: str | None = None,
    distilled_repo_id: str | None = None,
    source_dataset: str | None = None,
    license: str | None = None,
    endpoint: str | None = None,
    template_path: str | Path | None = None,
    overwrite: bool = False,
    flag: str = "overwrite=True",
    record: Any = None,
) -> Path:
    """Write a classifier folder, atomically: `save_pretrained` files + image processor + README.md model card.

    Like `save_distilled`, an existing folder is replaced only if hf_sfm wrote it (or `overwrite`).

    Exactly the files `push_classifier` sends, so `from_pretrained(path)` behaves like `from_pretrained(repo_id)`.
    `image_processor` defaults to `model.image_processor` (set on an `SFMInheritedClassifier`).
    """
    image_processor = image_processor if image_processor is not None else getattr(model, "image_processor", None)
    if image_processor is None:
        raise ValueError(
            "save_classifier needs the image processor (input size and normalisation): pass image_processor=, "
            "a classifier without it cannot be used from pixels."
        )
    with atomic_path(path, overwrite, flag) as staged:
        model.save_pretrained(staged)
        image_processor.save_pretrained(staged)
        card = model_card(
            model=model,
            metrics=metrics,
            repo_id=repo_id,
            distilled_repo_id=distilled_repo_id,
            source_dataset=source_dataset,
            license=license,
            files=[*folder_files(staged), "README.md"],
            endpoint=endpoint,
            template_path=template_path,
            record=record,
        )
        (staged / "README.md").write_text(str(card), encoding="utf-8")
    return Path(path)
