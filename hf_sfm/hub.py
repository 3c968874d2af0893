"""Cards and Hub pushes: publish a distilled set and its inherited classifier, so others can

    load_dataset("org/imagenet-sfm-ipc1")
    AutoModelForImageClassification.from_pretrained("org/imagenet-sfm-ipc1-classifier")

Cards are generated, not hand-written: Jinja templates in `hf_sfm/model_cards/` (the repository's top-level
`model_cards/` points at the same files) rendered through `DatasetCard.from_template` / `ModelCard.from_template`
with `DatasetCardData` / `ModelCardData`; evaluation results become the results table and, for the classifier,
`model-index` (which the Hub renders as the results widget).

Local layout first, push second: `save_distilled` (`hf_sfm.export`) and `save_classifier` write exactly the files a
repo receives, and `push_folder` uploads such a folder in ONE commit (`create_commit`, not `upload_folder`, whose Xet
pipeline may split large folders into several commits). A failed push (no token, no network, offline mode) raises
`HubPushError` naming the folder, which stays on disk: calling `push_distilled` / `push_classifier` on it again
retries without redoing any work.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .io_utils import atomic_path

logger = logging.getLogger(__name__)

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
REPO_ID_PATTERN = re.compile(r"^(?=.{3,96}$)[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
LICENSE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")
# Never pushed: dot-files (e.g. `.cache/` that `snapshot_download(local_dir=...)` leaves) and staging leftovers.
PUSH_IGNORE_PATTERNS = (".*", "*/.*", "*.tmp", "*/*.tmp")
# Remote files a new push replaces: stale data shards or weight shards of an earlier push would otherwise survive
# (and `data/train-*` would load them together with the new ones).
DATASET_DELETE_PATTERNS = ("data/*", "train/*", "*.safetensors")
MODEL_DELETE_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.py")

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


class HubPushError(RuntimeError):
    """A push did not complete. The local folder is intact; fix the cause and call the push again on it."""

    def __init__(self, message: str, folder: Path | None = None):
        super().__init__(message)
        self.folder = folder


class CardMetadataError(ValueError):
    """A card's YAML metadata would be rejected by the Hub (or would not round-trip through YAML)."""


def check_repo_id(repo_id: str) -> str:
    """`"namespace/name"`, the form every push here needs (a bare name would land in an unexpected namespace)."""
    if not isinstance(repo_id, str) or not REPO_ID_PATTERN.match(repo_id) or ".." in repo_id or "--" in repo_id:
        raise ValueError(
            f"repo_id={repo_id!r} is not a Hub repo id: use 'namespace/name' (your user or organisation, a slash, "
            "then letters, digits, '-', '_' or '.'; 96 characters at most; no '..' or '--'), "
            "e.g. 'my-org/imagenet-sfm-ipc1'."
        )
    return repo_id


def _is_hub_id(name: str | None) -> bool:
    """Whether `name` looks like a Hub repo id (not a local path), so card metadata may link to it."""
    if not name or Path(name).exists() or name.startswith((".", "/", "~")):
        return False
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", name))


# ---------------------------------------------------------------------------------------------------- results


@dataclass
class ResultRow:
    """One accuracy figure of a results dict: where it sits (`key`), what it is, mean ± std over `runs`."""

    key: tuple[str, ...]
    mean: float
    std: float | None = None
    runs: int | None = None
    eval_backbone: str | None = None

    @property
    def protocol(self) -> str:
        joined = "/".join(self.key).lower()
        return "classifier inheritance" if "inherit" in joined else "linear probe"

    @property
    def label(self) -> str:
        names = [_ROW_NAMES.get(part.lower(), part) for part in self.key if "inherit" not in part.lower()]
        return " / ".join(names) or "Inherited classifier"

    @property
    def accuracy_text(self) -> str:
        text = f"{100 * self.mean:.2f}"
        if self.std is not None and self.runs and self.runs > 1:
            text += f" ± {100 * self.std:.2f}"
        return text

    def as_row(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "protocol": self.protocol,
            "accuracy": self.accuracy_text,
            "runs": self.runs if self.runs is not None else "",
            "eval_backbone": self.eval_backbone or "",
        }


_ROW_NAMES = {
    "sfm": "SFM (this set)",
    "sfm_decouple": "SFM-decouple (class means)",
    "lgm": "LGM",
    "random": "Random real images",
    "random_real": "Random real images",
    "centroid": "Class centroids (real images)",
    "centroids": "Class centroids (real images)",
    "neighbors": "Nearest real neighbours",
    "full": "Full real dataset (upper bound)",
    "full_data": "Full real dataset (upper bound)",
    "full_dataset": "Full real dataset (upper bound)",
    "upper_bound": "Full real dataset (upper bound)",
}
_MEAN_KEYS = ("accuracy_mean", "accuracy", "top1", "top1_accuracy")


def _as_fraction(value: float) -> float:
    """Accuracies are fractions; a value above 1 is taken as a percentage."""
    return value / 100 if value > 1 else value


def result_rows(results: Mapping[str, Any] | None) -> list[ResultRow]:
    """Every accuracy figure in a (possibly nested) results dict, in insertion order.

    Tolerant of the shapes the evaluation code produces: a leaf is a number, or a dict with `accuracy` /
    `accuracy_mean` (plus optional `accuracy_std`, `runs` (int or list), `eval_backbone`). Other nested dicts are
    walked, their keys forming the row's `key` (e.g. `("inheritance", "sfm")`). Non-finite values are rejected:
    they cannot go into card metadata.
    """
    rows: list[ResultRow] = []

    def walk(value: Any, key: tuple[str, ...]) -> None:
        if isinstance(value, bool):
            return
        if isinstance(value, (int, float)):
            rows.append(ResultRow(key, _checked(_as_fraction(float(value)), key)))
            return
        if not isinstance(value, Mapping):
            return
        mean_key = next((k for k in _MEAN_KEYS if isinstance(value.get(k), (int, float))), None)
        if mean_key is None:
            for child_key, child in value.items():
                walk(child, (*key, str(child_key)))
            return
        std = value.get("accuracy_std", value.get("std"))
        runs = value.get("runs")
        runs = len(runs) if isinstance(runs, (list, tuple)) else runs
        per_run = value.get("accuracy_per_run")
        if runs is None and isinstance(per_run, (list, tuple)):
            runs = len(per_run)
        mean = float(value[mean_key])
        scale = 100.0 if mean > 1 else 1.0  # a percentage: its std is one too
        rows.append(
            ResultRow(
                key,
                _checked(mean / scale, key),
                float(std) / scale if isinstance(std, (int, float)) else None,
                int(runs) if isinstance(runs, (int, float)) else None,
                str(value["eval_backbone"]) if value.get("eval_backbone") else None,
            )
        )

    def _checked(mean: float, key: tuple[str, ...]) -> float:
        if not math.isfinite(mean) or not 0 <= mean <= 1:
            raise CardMetadataError(
                f"results[{'/'.join(key)}] has accuracy {mean!r}; a card needs a finite accuracy in [0, 1] "
                "(or a percentage in [0, 100])."
            )
        return mean

    walk(results or {}, ())
    return rows


def classifier_result(results: Mapping[str, Any] | None, method: str | None = None) -> ResultRow | None:
    """The accuracy of the inherited classifier: the row under an `inherit*` key (preferring `method`'s)."""
    inherited = [row for row in result_rows(results) if row.protocol == "classifier inheritance"]
    for row in inherited:
        if method and method in row.key:
            return row
    return inherited[0] if inherited else None


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


def _yaml_block(data: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True, default_flow_style=False).rstrip()


def _file_rows(files: Iterable[str], descriptions: Mapping[str, str]) -> list[dict[str, str]]:
    rows = []
    for path in sorted(set(files)):
        description = descriptions.get(path)
        if description is None and path.startswith("train/"):
            description = "`save_to_disk` layout (arrow), for `load_from_disk`"
        if description is None and path.endswith(".safetensors"):
            description = "weights"
        rows.append({"path": path, "description": description or ""})
    return rows


def dataset_card(
    *,
    class_names: list[str],
    num_images: int,
    config: Any = None,
    backbone: str = "",
    backbone_revision: str | None = None,
    source_dataset: str | None = None,
    results: Mapping[str, Any] | None = None,
    dataset_info: Any = None,
    repo_id: str | None = None,
    classifier_repo_id: str | None = None,
    license: str = "unknown",
    pretty_name: str | None = None,
    files: Iterable[str] = (),
    grid_file: str | None = "grid.png",
    preprocessing: Mapping[str, Any] | None = None,
    versions: Mapping[str, str] | None = None,
    template_path: str | Path | None = None,
):
    """The dataset card (a `huggingface_hub.DatasetCard`) of a distilled set.

    Args:
        class_names: the `C` class names, in label order.
        num_images: `C · ipc`.
        config: the run's `DistillationConfig` (or its dict): method, ipc and the recipe block.
        backbone, backbone_revision: the frozen backbone the set was distilled for.
        source_dataset: the real dataset (Hub id or name); becomes `source_datasets`.
        results: evaluation results (see `result_rows`) for the results table.
        dataset_info: a `datasets.DatasetInfo` with features, splits and sizes; becomes `dataset_info`.
        repo_id, classifier_repo_id: where the set and its classifier are (or will be) published.
        license: a Hub license id; the default "unknown" because the images derive from the source dataset.
        files: the repo's files, listed in the card.
        template_path: a Jinja template to use instead of `model_cards/dataset_card_template.md`.
    """
    from huggingface_hub import DatasetCard, DatasetCardData

    run = _config_dict(config)
    method = str(run.get("method", "sfm"))
    ipc = run.get("ipc", max(1, num_images // max(1, len(class_names))))
    tags = ["dataset-distillation", "synthetic", "hf_sfm", method.replace("_", "-")]
    card_data = DatasetCardData(
        license=license,
        task_categories=["image-classification"],
        size_categories=[size_category(num_images)],
        source_datasets=[source_dataset] if source_dataset else None,
        pretty_name=pretty_name or _pretty_name(source_dataset, method, ipc),
        tags=tags,
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
    )
    if dataset_info is not None:
        from datasets.info import DatasetInfosDict

        DatasetInfosDict({"default": dataset_info}).to_dataset_card_data(card_data)
    rows = [row.as_row() for row in result_rows(results)]
    card = DatasetCard.from_template(
        card_data,
        template_path=str(template_path or DATASET_CARD_TEMPLATE),
        repo_id=repo_id,
        load_path=repo_id or "path/to/this/folder",
        classifier_repo_id=classifier_repo_id,
        method=method,
        ipc=ipc,
        num_images=num_images,
        num_classes=len(class_names),
        class_names=list(class_names)[:50],
        more_classes=max(0, len(class_names) - 50),
        backbone=backbone or "unknown",
        backbone_revision=backbone_revision or "",
        source_dataset=source_dataset or "",
        source_is_hub_id=_is_hub_id(source_dataset),
        results=rows,
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


def _pretty_name(source_dataset: str | None, method: str, ipc: Any) -> str:
    source = source_dataset.split("/")[-1] if source_dataset else "distilled"
    return f"{source} distilled by {method.upper().replace('_', '-')} (ipc={ipc})"


def model_card(
    *,
    model: Any,
    results: Mapping[str, Any] | None = None,
    repo_id: str | None = None,
    distilled_repo_id: str | None = None,
    source_dataset: str | None = None,
    license: str = "unknown",
    files: Iterable[str] = (),
    endpoint: str | None = None,
    method: str | None = None,
    template_path: str | Path | None = None,
):
    """The model card (a `huggingface_hub.ModelCard`) of an inherited classifier (or any image classifier).

    Its `model-index` carries the classifier's accuracy from `results` (the row under an `inherit*` key, see
    `classifier_result`) on the source dataset's test split, naming the eval backbone; without such a row the
    card has no `model-index` and says so.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData, constants

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
    distill_backbone = getattr(config, "distill_backbone_name_or_path", None) or ""
    class_names = [config.id2label[i] for i in sorted(config.id2label)] if getattr(config, "id2label", None) else []
    row = classifier_result(results, method)
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
                dataset_split="test",
                metric_type="accuracy",
                metric_value=round(row.mean, 4),
                metric_name=f"Top-1 accuracy ({row.eval_backbone or backbone or 'eval backbone'})",
            )
        ]
    else:
        logger.warning(
            "No inherited-classifier accuracy in `results` (a row under an 'inheritance' key): the model card gets "
            "no model-index. Pass results from the evaluation module to publish one."
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
        classifier_row=row.as_row() if row else None,
        results=[r.as_row() for r in result_rows(results)],
        inheritance_yaml=_yaml_block(inheritance) if inheritance else "",
        files=_file_rows(files, MODEL_FILE_DESCRIPTIONS),
        citation=SFM_CITATION,
        paper_url=SFM_PAPER_URL,
    )
    validate_card_metadata(card, "model")
    return card


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


# ---------------------------------------------------------------------------------------------------- local layout


def folder_files(folder: str | Path) -> list[str]:
    """The repo-relative paths a push of `folder` sends (POSIX separators, dot-files and temporaries excluded)."""
    folder = Path(folder)
    paths = [path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()]
    return sorted(p for p in paths if not any(fnmatch.fnmatch(p, pattern) for pattern in PUSH_IGNORE_PATTERNS))


def save_classifier(
    path: str | Path,
    model: Any,
    image_processor: Any = None,
    *,
    results: Mapping[str, Any] | None = None,
    repo_id: str | None = None,
    distilled_repo_id: str | None = None,
    source_dataset: str | None = None,
    license: str = "unknown",
    endpoint: str | None = None,
    template_path: str | Path | None = None,
) -> Path:
    """Write a classifier folder, atomically: `save_pretrained` files + image processor + README.md model card.

    Exactly the files `push_classifier` sends, so `from_pretrained(path)` behaves like `from_pretrained(repo_id)`.
    `image_processor` defaults to `model.image_processor` (set on an `SFMInheritedClassifier`).
    """
    image_processor = image_processor if image_processor is not None else getattr(model, "image_processor", None)
    if image_processor is None:
        raise ValueError(
            "save_classifier needs the image processor (input size and normalisation): pass image_processor=, "
            "a classifier without it cannot be used from pixels."
        )
    with atomic_path(path) as staged:
        model.save_pretrained(staged)
        image_processor.save_pretrained(staged)
        card = model_card(
            model=model,
            results=results,
            repo_id=repo_id,
            distilled_repo_id=distilled_repo_id,
            source_dataset=source_dataset,
            license=license,
            files=[*folder_files(staged), "README.md"],
            endpoint=endpoint,
            template_path=template_path,
        )
        (staged / "README.md").write_text(str(card), encoding="utf-8")
    return Path(path)


# ---------------------------------------------------------------------------------------------------- pushes


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    repo_type: str,
    private: bool = False,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    create_pr: bool = False,
    delete_patterns: Iterable[str] = (),
    endpoint: str | None = None,
):
    """Upload `folder` to `repo_id` in one commit; returns the `CommitInfo` (`.pr_url` set with `create_pr`).

    Creates the repo (`private` only applies to a new repo) and, with `revision`, the branch. Remote files matching
    `delete_patterns` that the folder no longer has are deleted in the same commit. Errors that a retry can fix
    (no token, offline mode, network, authorisation) raise `HubPushError`; the folder is left as it is.
    """
    import httpx2
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    check_repo_id(repo_id)
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Nothing to push: {folder} is not a folder.")
    if create_pr and revision not in (None, "main"):
        raise ValueError(
            f"create_pr=True opens a pull request against the default branch; revision={revision!r} cannot be "
            "combined with it. Push to the branch (revision=...) or open a PR (create_pr=True), not both."
        )
    files = folder_files(folder)
    if "README.md" in files:
        validate_card_metadata((folder / "README.md").read_text(encoding="utf-8"), repo_type)
    again = {"dataset": "push_distilled", "model": "push_classifier"}.get(repo_type, "push_folder")
    retry = f"The files are kept in {folder}; push them again with hf_sfm.hub.{again}({str(folder)!r}, {repo_id!r})."
    if not (token or get_token()):
        raise HubPushError(
            f"No Hugging Face token: pushing to {repo_id!r} needs one with write access. Run `hf auth login`, set "
            f"HF_TOKEN, or pass token=. {retry}",
            folder,
        )
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        if revision is not None and not create_pr:
            api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
        target = revision if not create_pr else None
        operations: list = []
        if delete_patterns:
            remote = api.list_repo_files(repo_id, repo_type=repo_type, revision=target)
            stale = [
                path
                for path in remote
                if path not in files and any(fnmatch.fnmatch(path, pattern) for pattern in delete_patterns)
            ]
            operations += [CommitOperationDelete(path_in_repo=path) for path in stale]
        operations += [CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(folder / path)) for path in files]
        return api.create_commit(
            repo_id,
            operations,
            commit_message=commit_message or f"Upload {repo_type} with hf_sfm",
            commit_description=commit_description,
            repo_type=repo_type,
            revision=target,
            create_pr=create_pr,
        )
    except OfflineModeIsEnabled as error:
        raise HubPushError(f"Offline mode is on (HF_HUB_OFFLINE=1): unset it to push. {retry}", folder) from error
    except httpx2.TransportError as error:
        raise HubPushError(
            f"Could not reach the Hub at {api.endpoint} ({type(error).__name__}: {error}). Check the network "
            f"(or HF_ENDPOINT). {retry}",
            folder,
        ) from error
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", None)
        if status in (401, 403):
            raise HubPushError(
                f"The Hub refused the token for {repo_id!r} (HTTP {status}): it needs write access to the "
                f"'{repo_id.split('/')[0]}' namespace. Use another token (`hf auth login`) or namespace. {retry}",
                folder,
            ) from error
        if status is not None and status >= 500:
            raise HubPushError(
                f"The Hub failed with HTTP {status}: {error}. Try again later. {retry}", folder
            ) from error
        raise


def push_distilled(folder: str | Path, repo_id: str, **kwargs: Any):
    """Push a `save_distilled` folder as a dataset repo (one commit; stale data shards removed)."""
    kwargs["delete_patterns"] = kwargs.get("delete_patterns") or DATASET_DELETE_PATTERNS
    kwargs["commit_message"] = kwargs.get("commit_message") or "Upload distilled dataset with hf_sfm"
    return push_folder(folder, repo_id, repo_type="dataset", **kwargs)


def push_classifier(folder: str | Path, repo_id: str, **kwargs: Any):
    """Push a `save_classifier` folder as a model repo (one commit; stale weight shards removed)."""
    kwargs["delete_patterns"] = kwargs.get("delete_patterns") or MODEL_DELETE_PATTERNS
    kwargs["commit_message"] = kwargs.get("commit_message") or "Upload inherited classifier with hf_sfm"
    return push_folder(folder, repo_id, repo_type="model", **kwargs)
