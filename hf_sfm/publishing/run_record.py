"""One record of a run, which every card and metrics file is written from.

A card a stranger can reproduce needs every setting that changes a number (the distillation config, the probe the
scores came from, the sizes the run actually used), where the evaluation images came from (a dataset's own test
split, or a part carved out of its training split), why a run was not evaluated, and what the run warned about;
and it must hold nothing private (a local path names the user's machine, not the backbone). The writers read this
record instead of re-deriving those facts each on its own, so the card, `distillation_config.json` and the
metrics files cannot disagree.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..evaluation.probe import NOT_FOR_CARD, forget_warnings

RECORD_KEY = "run"  # where `distillation_config.json` keeps the record
PATH_FIELDS = ("output_dir", "statistics_path", "resume_from_checkpoint")  # config fields that may hold local paths
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def is_local_path(name: str | None) -> bool:
    """Whether `name` names something on this machine (an existing path, or one spelled as a path) rather than a
    Hub repo id (`namespace/name`) or a `datasets` builder name (`imagefolder`)."""
    if not name:
        return False
    name = str(name)
    if name.startswith((".", "/", "~")) or "\\" in name or Path(name).exists():
        return True
    return "/" in name and not HUB_ID.fullmatch(name)


def portable_name(name: str | None, kind: str = "checkpoint") -> str | None:
    """`name` as a published card may show it: a Hub id or builder name as is; a local path as its last part and
    `(a local <kind>)`, since the rest of the path is the user's machine and means nothing to a reader."""
    if not name or not is_local_path(name):
        return name
    return f"{Path(str(name).rstrip('/')).name or 'unnamed'} (a local {kind})"


ABSOLUTE_PATH = re.compile(r"(?<![\w/])(?:~|/)[^\s'\"(),:;]*[^\s'\"(),:;.]")


def without_local_paths(text: str) -> str:
    """`text` (a warning, say) with every absolute path in it replaced by its last part: messages name the
    user's files, which a published card must not."""
    return ABSOLUTE_PATH.sub(lambda match: Path(match.group(0).rstrip("/")).name or match.group(0), text)


def portable_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config dict without local paths: an absolute (or home-relative) path field keeps only its last part."""
    values = dict(config)
    for name in PATH_FIELDS:
        value = values.get(name)
        if isinstance(value, str) and value.startswith(("/", "~")):
            values[name] = Path(value.rstrip("/")).name
    return values


@dataclass
class EvalSplit:
    """Where the evaluation images came from.

    `name` is the split of the source dataset they belong to (what `model-index` calls the split: `train` when they
    were carved out of the training split); `description` says it in words for the card."""

    name: str
    description: str

    @classmethod
    def named(cls, name: str) -> EvalSplit:
        return cls(name=name, description=f"the real `{name}` split")

    @classmethod
    def carved(cls, train_split: str, size: float, seed: int) -> EvalSplit:
        share = f"{100 * size:g} %" if size < 1 else f"{int(size)} images"
        return cls(
            name=train_split,
            description=f"{share} of the real `{train_split}` split, held out before distilling (eval_split_size="
            f"{size:g}, stratified by label, seed {seed}), not a test split of the dataset",
        )


@dataclass
class RunRecord:
    """What a run's cards and metrics files say about it.

    Args:
        config: the run's `DistillationConfig` as a dict, without local paths (`portable_config`).
        probe: the `ProbeConfig` the evaluation probes ran with, as a dict (None: not evaluated).
        backbone, backbone_revision: the frozen backbone, portable (`portable_name`).
        image_size, crop_size: the synthetic resolution and the backbone's input resolution the run used.
        source_dataset: the real dataset, portable.
        eval_split: where the evaluation images came from (None: not evaluated).
        not_evaluated: why the run was not evaluated, when it was not.
        warnings: what the run warned about (`WarningRecorder`), in order, each once.
        data: data settings that change a number (e.g. `max_train_samples`), as given.
        backbones: with several distillation backbones, each one's `name` (portable), `revision`, `short_name` and
            loss `weight`, the primary first (empty with one: `backbone` says it).
    """

    config: dict[str, Any]
    probe: dict[str, Any] | None = None
    backbone: str | None = None
    backbone_revision: str | None = None
    image_size: int | None = None
    crop_size: int | None = None
    source_dataset: str | None = None
    eval_split: EvalSplit | None = None
    not_evaluated: str | None = None
    warnings: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    backbones: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        config: Any,
        *,
        probe: Any = None,
        backbone: str | None = None,
        backbone_revision: str | None = None,
        image_size: int | None = None,
        crop_size: int | None = None,
        source_dataset: str | None = None,
        eval_split: EvalSplit | None = None,
        not_evaluated: str | None = None,
        warnings: Iterable[str] = (),
        data: Mapping[str, Any] | None = None,
        backbones: Iterable[Mapping[str, Any]] = (),
    ) -> RunRecord:
        """The record from the run's parts (a `DistillationConfig` or its dict, a `ProbeConfig` or its dict)."""
        values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        if dataclasses.is_dataclass(probe):
            probe = dataclasses.asdict(probe)
        return cls(
            config=portable_config(values),
            probe=dict(probe) if probe is not None else None,
            backbone=portable_name(backbone),
            backbone_revision=backbone_revision or None,
            image_size=image_size,
            crop_size=crop_size,
            source_dataset=portable_name(source_dataset, "dataset"),
            eval_split=eval_split,
            not_evaluated=not_evaluated,
            warnings=list(dict.fromkeys(without_local_paths(message) for message in warnings)),
            data={key: value for key, value in (data or {}).items() if value is not None},
            backbones=[{**b, "name": portable_name(str(b.get("name") or ""))} for b in backbones],
        )

    @property
    def license(self) -> str:
        """The classifier card's licence: `config.license`, else "unknown"."""
        return self.config.get("license") or "unknown"

    @property
    def dataset_license(self) -> str:
        """The distilled set's licence: `config.dataset_license`, else "unknown"."""
        return self.config.get("dataset_license") or "unknown"

    def settings(self) -> dict[str, Any]:
        """The settings block of a card: the config with the sizes the run used in place of "the default" (None),
        so copying the block reproduces the run whatever the defaults become."""
        values = dict(self.config)
        if self.image_size is not None:
            values["image_size"] = self.image_size
        if self.crop_size is not None:
            values["crop_size"] = self.crop_size
        return values

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RunRecord:
        values = dict(values)
        if values.get("eval_split") is not None:
            values["eval_split"] = EvalSplit(**values["eval_split"])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


class WarningRecorder(logging.Handler):
    """Collects the warnings logged under `loggers` while it is attached, each message once, for the card.

    A warning the run printed ("the probe can barely move its head", "pixels saturated") changes what its numbers
    mean, so it belongs in what is published with them, not only in a terminal that is gone."""

    def __init__(self, loggers: Iterable[str] = ("hf_sfm", "recipes")):
        super().__init__(level=logging.WARNING)
        self.logger_names = tuple(loggers)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, NOT_FOR_CARD, False):  # a statement (which protocol ran), not a caveat
            return
        message = record.getMessage().strip()
        if message and message not in self.messages:
            self.messages.append(message)

    def __enter__(self) -> WarningRecorder:
        forget_warnings()  # a warning an earlier run in this process gave is this run's too
        for name in self.logger_names:
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        for name in self.logger_names:
            logging.getLogger(name).removeHandler(self)
