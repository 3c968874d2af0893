"""Cards are generated, not hand-written: the dataset card of a distilled set and the model card of a classifier.

Jinja templates in `hf_sfm/publishing/model_cards/` (the repository's top-level `model_cards/` holds the same
files) are rendered through `DatasetCard.from_template` / `ModelCard.from_template` with `DatasetCardData` /
`ModelCardData`.
Results come in as the flat metrics dicts `Distiller.evaluate()` returns and are read by `hf_sfm.evaluation.results`
(one schema); they become the results table and, for the classifier, `model-index` (the Hub's results widget).
`validate_card_metadata` checks a card's YAML header as the Hub would, before anything is uploaded.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ..evaluation.results import inherited_row, result_rows
from .run_record import RunRecord, is_local_path, portable_config, portable_name

logger = logging.getLogger(__name__)

Metrics = Mapping[str, Any] | Sequence[Mapping[str, Any]]

TEMPLATES_DIR = Path(__file__).parent / "model_cards"
DATASET_CARD_TEMPLATE = TEMPLATES_DIR / "dataset_card_template.md"
MODEL_CARD_TEMPLATE = TEMPLATES_DIR / "model_card_template.md"

SFM_PAPER_URL = "https://arxiv.org/abs/2602.05391"
# Title as listed on the arXiv abstract page (v2 is titled "Efficient Dataset Distillation for Pre-Trained
# Self-Supervised Models via Statistical Flow Matching"); authors are left to the arXiv entry.
SFM_CITATION = """@misc{sfm2026,
  title         = {Dataset Distillation via Relative Distribution Matching and Cognitive Heritage},
  year          = {2026},
  eprint        = {2602.05391},
  archivePrefix = {arXiv},
  primaryClass  = {cs.CV},
  url           = {https://arxiv.org/abs/2602.05391},
}"""

# The Hub's `size_categories` buckets, as (upper bound, label).
SIZE_CATEGORIES = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
)
LICENSE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")

DATASET_FILE_DESCRIPTIONS = {
    "README.md": "this card",
    "data/train-00000-of-00001.parquet": "the images (8-bit PNG) and labels; what `load_dataset` reads",
    "synthetic.safetensors": "the float images before 8-bit quantisation `(N, 3, H, W)` in [0, 1], with labels",
    "statistics.safetensors": "the real per-class feature sums and counts the set was distilled from",
    "distillation_config.json": "the run's `DistillationConfig`, preprocessing, backbone and library versions",
    "grid.png": "the picture above",
    "dataset_dict.json": "`DatasetDict.save_to_disk` layout, so `load_from_disk` works on a downloaded copy",
}
MODEL_FILE_DESCRIPTIONS = {
    "README.md": "this card",
    "config.json": "architecture, labels and the inheritance record",
    "model.safetensors": "weights",
    "preprocessor_config.json": "the image processor (resize, crop, normalisation)",
    "modeling_inherited.py": "the model code, for `trust_remote_code=True` without `hf_sfm` installed",
}


class CardMetadataError(ValueError):
    """A card's YAML metadata would be rejected by the Hub (or would not round-trip through YAML)."""


def _is_hub_id(name: str | None) -> bool:
    """Whether `name` looks like a Hub repo id, so card metadata may link to it: not a local path, and not the name
    of a `datasets` builder (`imagefolder`, `parquet`, ...), which names a file format, not a Hub page."""
    if not name or Path(name).exists() or name.startswith((".", "/", "~")):
        return False
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    if name in _PACKAGED_DATASETS_MODULES:
        return False
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", name))


# ---------------------------------------------------------------------------------------------------- cards


def size_category(num_examples: int) -> str:
    for bound, label in SIZE_CATEGORIES:
        if num_examples < bound:
            return label
    return "n>1B"


def _config_dict(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    if hasattr(config, "to_dict"):
        return dict(config.to_dict())
    return dict(config)


def _without_paths(value: Any) -> Any:
    """`value` with every absolute or home-relative path string replaced by its `portable_name` (cards are public)."""
    if isinstance(value, Mapping):
        return {key: _without_paths(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_without_paths(item) for item in value]
    if isinstance(value, str) and value.startswith(("/", "~")):
        return portable_name(value, "path")
    return value


def _pretty_source(source_dataset: str | None) -> str | None:
    """The source's short name for a title: a portable local name without its "(a local ...)" note."""
    return re.sub(r" \(a local \w+\)$", "", source_dataset) if source_dataset else source_dataset


def _yaml_block(data: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True, default_flow_style=False).rstrip()


def _file_rows(files: Iterable[str], descriptions: Mapping[str, str]) -> list[dict[str, str]]:
    rows = []
    for path in sorted(set(files)):
        description = descriptions.get(path)
        if description is None and path.startswith("train/"):
            description = "`save_to_disk` layout (arrow), for `load_from_disk`"
        if description is None and path.startswith("statistics-") and path.endswith(".safetensors"):
            backbone = path.removeprefix("statistics-").removesuffix(".safetensors")
            description = f"the same statistics under the backbone `{backbone}` (a set distilled for several)"
        if description is None and path.endswith(".safetensors"):
            description = "weights"
        rows.append({"path": path, "description": description or ""})
    return rows


INIT_WORDS = {
    "centroid": "the real image nearest each class mean",
    "real": "random real images",
    "noise": "noise",
}


def _images_sentence(run: Mapping[str, Any]) -> str:
    """How the run shaped its images, from its config (a card must not claim a pyramid for a pixel run)."""
    if not run.get("parameterization"):
        return ""
    start = INIT_WORDS.get(str(run.get("init")), f"init={run.get('init')!r}")
    if run["parameterization"] == "pyramid":
        colour = " with colour decorrelation" if run.get("decorrelate_color") else ""
        return f"The images are a multi-scale pyramid{colour}, grown coarse to fine from {start}."
    return f"The images are optimised pixel by pixel, starting from {start}."


def dataset_card(
    *,
    class_names: list[str],
    num_images: int,
    config: Any = None,
    backbone: str = "",
    backbone_revision: str | None = None,
    source_dataset: str | None = None,
    metrics: Metrics | None = None,
    dataset_info: Any = None,
    repo_id: str | None = None,
    classifier_repo_id: str | None = None,
    license: str | None = None,
    pretty_name: str | None = None,
    files: Iterable[str] = (),
    grid_file: str | None = "grid.png",
    preprocessing: Mapping[str, Any] | None = None,
    versions: Mapping[str, str] | None = None,
    template_path: str | Path | None = None,
    record: RunRecord | None = None,
    backbones: Sequence[Mapping[str, Any]] | None = None,
    selection: Mapping[str, Any] | None = None,
):
    """The dataset card (a `huggingface_hub.DatasetCard`) of a distilled set.

    Args:
        class_names: the `C` class names, in label order.
        num_images: `C · ipc`.
        config: the run's `DistillationConfig` (or its dict): method, ipc and the recipe block.
        backbone, backbone_revision: the frozen backbone the set was distilled for.
        source_dataset: the real dataset as the user gave it (Hub id, local folder, data files); named in the card,
            and linked and listed in `source_datasets` only when it is a Hub id.
        metrics: what `Distiller.evaluate()` returned (one dict, or several for several eval backbones): the
            results table (`hf_sfm.evaluation.results.result_rows`).
        dataset_info: a `datasets.DatasetInfo` with features, splits and sizes; becomes `dataset_info`.
        repo_id, classifier_repo_id: where the set and its classifier are (or will be) published.
        license: a Hub license id (default: `record.dataset_license` / the config's `dataset_license`, else
            "unknown", which the card says was not given: the images derive from the source dataset).
        files: the repo's files, listed in the card.
        template_path: a Jinja template to use instead of `model_cards/dataset_card_template.md`.
        record: the run's `RunRecord`: backbone, source, settings (with the sizes used), probe, where the eval
            images came from, why the run was not evaluated, its warnings. It wins over `config`, `backbone`,
            `source_dataset`. Local paths never reach the card, with or without a record.
        backbones: every backbone a set distilled against several was made for (`FrozenBackbones.descriptions`:
            `name`, `revision`, `short_name`, `weight`; the primary first), listed with its accuracy from `metrics`
            (`eval_accuracy` for the primary, `eval_<short_name>_accuracy` for the others). A record's win.
        selection: the best-step selection (`Distiller.selection_record()`): which step was kept and why.
    """
    from huggingface_hub import DatasetCard, DatasetCardData

    if record is not None:
        run = record.settings()
        backbone = record.backbone or backbone
        backbone_revision = record.backbone_revision or backbone_revision
        source_dataset = record.source_dataset or source_dataset
        backbones = record.backbones or backbones
    else:
        run = portable_config(_config_dict(config))
    run = _without_paths(run)
    backbone = portable_name(backbone) or ""
    source_dataset = portable_name(source_dataset, "dataset")
    license = license or run.get("dataset_license") or "unknown"
    method = str(run.get("method", "sfm"))
    ipc = run.get("ipc", max(1, num_images // max(1, len(class_names))))
    tags = ["dataset-distillation", "synthetic", "hf_sfm", method.replace("_", "-")]
    card_data = DatasetCardData(
        license=license,
        task_categories=["image-classification"],
        size_categories=[size_category(num_images)],
        source_datasets=[source_dataset] if _is_hub_id(source_dataset) else None,  # prose names any other
        pretty_name=pretty_name or _pretty_name(_pretty_source(source_dataset), method, ipc),
        tags=tags,
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
    )
    if dataset_info is not None:
        from datasets.info import DatasetInfosDict

        DatasetInfosDict({"default": dataset_info}).to_dataset_card_data(card_data)
    rows = [row.as_row() for row in result_rows(metrics)]
    card = DatasetCard.from_template(
        card_data,
        template_path=str(template_path or DATASET_CARD_TEMPLATE),
        repo_id=repo_id,
        load_path=repo_id or "path/to/this/folder",
        classifier_repo_id=classifier_repo_id,
        method=method,
        ipc=ipc,
        images_sentence=_images_sentence(run),
        num_images=num_images,
        num_classes=len(class_names),
        class_names=list(class_names)[:50],
        more_classes=max(0, len(class_names) - 50),
        backbone=backbone or "unknown",
        backbone_revision=backbone_revision or "",
        distill_backbones=distill_backbone_rows(backbones, metrics),
        source_dataset=source_dataset or "",
        source_is_hub_id=_is_hub_id(source_dataset),
        results=[_portable_row(row) for row in rows],
        **_record_fields(record, license),
        selection_text=selection_text(selection),
        grid_file=grid_file,
        recipe_yaml=_yaml_block(run) if run else "",
        preprocessing_yaml=_yaml_block(preprocessing) if preprocessing else "",
        versions_yaml=_yaml_block(versions) if versions else "",
        files=_file_rows(files, DATASET_FILE_DESCRIPTIONS),
        citation=SFM_CITATION,
        paper_url=SFM_PAPER_URL,
    )
    validate_card_metadata(card, "dataset")
    return card


def distill_backbone_rows(backbones: Sequence[Mapping[str, Any]] | None, metrics: Metrics | None) -> list[dict]:
    """The card's rows of the backbones a set was distilled for: portable name, revision, loss weight, and the
    distilled set's accuracy on it where `metrics` have it (`eval_accuracy` for the primary, else
    `eval_<short_name>_accuracy`; "not evaluated" otherwise)."""
    dicts = [] if metrics is None else [metrics] if isinstance(metrics, Mapping) else list(metrics)
    rows = []
    for index, backbone in enumerate(backbones or []):
        key = "eval_accuracy" if index == 0 else f"eval_{backbone.get('short_name')}_accuracy"
        value = next((flat[key] for flat in dicts if isinstance(flat.get(key), int | float)), None)
        weight = backbone.get("weight")
        rows.append(
            {
                "name": portable_name(str(backbone.get("name") or "")) or "unknown",
                "revision": backbone.get("revision") or "",
                "weight": f"{float(weight):.3g}" if weight is not None else "",
                "accuracy": f"{100 * float(value):.2f}" if value is not None else "not evaluated",
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------- best-step selection


def selection_text(selection: Mapping[str, Any] | None) -> str:
    """The card's paragraph on the kept step: the metric, its value, the evaluated steps it was chosen among, and
    the split it was chosen on (never the split the results table reports)."""
    if not selection or selection.get("step") is None:
        return ""
    steps = list(selection.get("evaluated_steps") or [])
    direction = "highest" if selection.get("greater_is_better", True) else "lowest"
    kept = "These images are" if selection.get("load_best_model_at_end") else "The run tracked, but did not keep,"
    split = selection.get("validation_split")
    where = split["description"] if isinstance(split, Mapping) else selection.get("selection_split") or "eval_dataset"
    return (
        f"{kept} the synthetic set at step {selection['step']} of {selection.get('num_steps', '?')}: its "
        f"`{selection['metric']}` = {float(selection['value']):.4g} was the {direction} of the {len(steps)} "
        f"evaluated steps ({', '.join(str(step) for step in steps)}). The step was chosen on {where}, with the "
        f"`{selection.get('probe_protocol', 'fast')}` probe protocol; the results table above is on the evaluation "
        "images it names, not on this split."
    )


# ---------------------------------------------------------------------------------------------- run record


def _record_fields(record: RunRecord | None, license: str) -> dict[str, Any]:
    """What both cards say from the run record: where the eval images came from, why there was no evaluation,
    the probe settings, the run's warnings, and whether a licence was given."""
    eval_split = record.eval_split if record is not None else None
    probe = _without_paths(record.probe) if record is not None and record.probe else None
    return {
        "eval_text": eval_split.description if eval_split is not None else "the real evaluation split",
        "not_evaluated": (record.not_evaluated if record is not None else None) or "",
        "probe_yaml": _yaml_block(probe) if probe else "",
        "data_yaml": _yaml_block(_without_paths(record.data)) if record is not None and record.data else "",
        "run_warnings": list(record.warnings) if record is not None else [],
        "license_given": license != "unknown",
        "license_id": license,
    }


def _pretty_name(source_dataset: str | None, method: str, ipc: Any) -> str:
    source = source_dataset.split("/")[-1] if source_dataset else "distilled"
    return f"{source} distilled by {method.upper().replace('_', '-')} (ipc={ipc})"


def model_card(
    *,
    model: Any,
    metrics: Metrics | None = None,
    repo_id: str | None = None,
    distilled_repo_id: str | None = None,
    source_dataset: str | None = None,
    license: str | None = None,
    files: Iterable[str] = (),
    endpoint: str | None = None,
    method: str | None = None,
    template_path: str | Path | None = None,
    record: RunRecord | None = None,
):
    """The model card (a `huggingface_hub.ModelCard`) of an inherited classifier (or any image classifier).

    Its `model-index` carries the classifier's accuracy from `metrics` (`{prefix}_inherited_accuracy`, see
    `hf_sfm.evaluation.results`) on the source dataset's test split, naming the eval backbone; without such a row the
    card has no `model-index` and says so. `record` (the run's `RunRecord`) gives the licence (`license`, else
    "unknown"), the source, where the eval images came from (the `model-index` split) and the run's warnings.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData, constants

    if record is not None:
        source_dataset = record.source_dataset or source_dataset
        license = license or record.license
    source_dataset = portable_name(source_dataset, "dataset")
    license = license or "unknown"
    eval_split = record.eval_split.name if record is not None and record.eval_split is not None else "test"

    config = model.config
    inheritance = dict(getattr(config, "inheritance", None) or {})
    method = method or (inheritance.get("distillation") or {}).get("method") or "sfm"
    vision_config = getattr(config, "vision_config", None)
    reference = getattr(config, "backbone_name_or_path", None)
    backbone = (
        reference
        or getattr(config, "backbone_class", None)
        or getattr(vision_config, "model_type", None)
        or getattr(config, "_name_or_path", "")
        or ""
    )
    backbone = portable_name(backbone) or ""
    distill_backbone = portable_name(getattr(config, "distill_backbone_name_or_path", None)) or ""
    class_names = [config.id2label[i] for i in sorted(config.id2label)] if getattr(config, "id2label", None) else []
    row = inherited_row(metrics)
    name = (repo_id or "").split("/")[-1] or f"{method}-inherited-classifier"
    eval_results = None
    if row is not None:
        dataset_id = source_dataset or distilled_repo_id or "unknown"
        eval_results = [
            EvalResult(
                task_type="image-classification",
                task_name="Image Classification",
                dataset_type=dataset_id,
                dataset_name=source_dataset or dataset_id,
                dataset_split=eval_split,
                metric_type="accuracy",
                metric_value=round(row.accuracy, 4),
                metric_name=f"Top-1 accuracy ({portable_name(row.eval_backbone) or backbone or 'eval backbone'})",
            )
        ]
    else:
        logger.warning(
            "No inherited-classifier accuracy in `metrics` (an '<prefix>_inherited_accuracy' key): the model card "
            "gets no model-index. Pass the metrics with the classifier's score to publish one."
        )
    dataset_ids = [d for d in (distilled_repo_id, source_dataset) if _is_hub_id(d)]
    card_data = ModelCardData(
        license=license,
        library_name="transformers",
        pipeline_tag="image-classification",
        tags=["hf_sfm", "dataset-distillation", "classifier-inheritance", method.replace("_", "-")],
        datasets=dataset_ids or None,
        base_model=reference if _is_hub_id(reference) else None,  # only a real Hub id, never a class name
        metrics=["accuracy"],
        model_name=name,
        eval_results=eval_results,
    )
    endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
    grid_url = f"{endpoint}/datasets/{distilled_repo_id}/resolve/main/grid.png" if distilled_repo_id else None
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path or MODEL_CARD_TEMPLATE),
        repo_id=repo_id,
        title=name,
        load_path=repo_id or "path/to/this/folder",
        distilled_repo_id=distilled_repo_id,
        grid_url=grid_url,
        method=method,
        model_class=type(model).__name__,
        is_inherited=getattr(config, "model_type", "") == "hf_sfm_inherited",
        backbone=backbone or "unknown",
        backbone_revision=getattr(config, "backbone_revision", None) or "",
        distill_backbone=distill_backbone,
        embed_backbone=bool(getattr(config, "embed_backbone", True)),
        num_classes=len(class_names),
        class_names=class_names[:50],
        more_classes=max(0, len(class_names) - 50),
        source_dataset=source_dataset or "",
        classifier_row=_portable_row(row.as_row()) if row else None,
        results=[_portable_row(r.as_row()) for r in result_rows(metrics)],
        **_record_fields(record, license),
        inheritance_yaml=_yaml_block(_without_paths(inheritance)) if inheritance else "",
        files=_file_rows(files, MODEL_FILE_DESCRIPTIONS),
        citation=SFM_CITATION,
        paper_url=SFM_PAPER_URL,
    )
    validate_card_metadata(card, "model")
    return card


def _portable_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A results-table row whose eval backbone is named portably (it is a local path when given as one)."""
    row = dict(row)
    if isinstance(row.get("eval_backbone"), str) and is_local_path(row["eval_backbone"]):
        row["eval_backbone"] = portable_name(row["eval_backbone"])
    return row


REQUIRED_METADATA = {
    "dataset": ("license", "task_categories", "size_categories", "configs", "tags"),
    "model": ("license", "library_name", "pipeline_tag", "tags"),
}
ALLOWED_SIZE_CATEGORIES = {label for _, label in SIZE_CATEGORIES} | {"n>1B", "n>1T"}


def validate_card_metadata(card: Any, repo_type: str) -> dict[str, Any]:
    """Check a card's YAML header as the Hub would, locally (no network); returns the parsed metadata.

    `card` is a `RepoCard` or the README text. Raises `CardMetadataError` naming the field and the fix when the
    header does not parse to a mapping, lacks a required field, has an invalid license / size category / repo id /
    metric value, or does not round-trip (YAML that would load back as something else).
    """
    text = str(card)
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.DOTALL)
    if match is None:
        raise CardMetadataError("The card has no YAML metadata header ('---' ... '---' at the top of README.md).")
    try:
        metadata = yaml.safe_load(match.group(1))
    except yaml.YAMLError as error:
        raise CardMetadataError(f"The card's YAML metadata does not parse: {error}") from error
    if not isinstance(metadata, dict):
        raise CardMetadataError(f"The card's YAML metadata must be a mapping, got {type(metadata).__name__}.")
    data = getattr(card, "data", None)
    if data is not None and hasattr(data, "to_dict") and metadata != _plain(data.to_dict()):
        raise CardMetadataError(
            "The card's YAML metadata does not round-trip: the header loads back differently from the card data "
            "(a value that YAML cannot represent faithfully, e.g. a custom object)."
        )
    missing = [key for key in REQUIRED_METADATA[repo_type] if not metadata.get(key)]
    if missing:
        raise CardMetadataError(f"The {repo_type} card lacks required metadata field(s) {missing}.")
    license = metadata["license"]
    if not isinstance(license, str) or not LICENSE_PATTERN.match(license):
        raise CardMetadataError(
            f"license={license!r} is not a Hub license identifier (lowercase, like 'apache-2.0', 'mit', "
            "'cc-by-4.0', 'unknown'); for another licence use license='other' with license_name and license_link."
        )
    if license == "other" and repo_type == "model" and not metadata.get("license_name"):
        raise CardMetadataError("license='other' needs license_name (and license_link) in the card metadata.")
    for key in ("tags", "task_categories", "size_categories", "source_datasets", "datasets"):
        values = metadata.get(key)
        if values is not None and (not isinstance(values, list) or not all(isinstance(v, str) for v in values)):
            raise CardMetadataError(f"Card metadata {key!r} must be a list of strings, got {values!r}.")
    for value in metadata.get("size_categories") or []:
        if value not in ALLOWED_SIZE_CATEGORIES:
            raise CardMetadataError(f"size_categories value {value!r} is not one of {sorted(ALLOWED_SIZE_CATEGORIES)}.")
    for key in ("base_model", "datasets"):
        values = metadata.get(key)
        for value in [values] if isinstance(values, str) else values or []:
            if not _is_hub_id(value):
                raise CardMetadataError(f"Card metadata {key}={value!r} is not a Hub repo id ('namespace/name').")
    for entry in metadata.get("model-index") or []:
        for result in entry.get("results", []):
            for metric in result.get("metrics", []):
                value = metric.get("value")
                if not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise CardMetadataError(f"model-index metric {metric.get('type')!r} has value {value!r}.")
            if not result.get("dataset", {}).get("type"):
                raise CardMetadataError("model-index results need dataset.type (the evaluation dataset's id).")
    return metadata


def _plain(value: Any) -> Any:
    """What a value becomes after a YAML dump + load (tuples → lists), to compare card data with its header."""
    return yaml.safe_load(yaml.safe_dump(value, sort_keys=False)) if value is not None else None
