"""A finished distilled set as one value, and where a push of it goes.

Export and push take a `DistilledSet` (the images and everything a card and a reload need: classes, config,
statistics, preprocessing, backbone) instead of a dozen loose arguments, so saving a folder and pushing it cannot
describe two different sets. `HubTarget` checks the repos and the push options before any folder is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch

from ..backbone.group import FrozenBackbones
from ..data.real_data import RealData
from . import hub
from .export import distilled_dataset, save_classifier, save_distilled

OVERWRITE_FLAG = "overwrite_output_dir=True"


@dataclass
class DistilledSet:
    """The synthetic images `(N, 3, S, S)` in `[0, 1]` with their `(N,)` labels, and what produced them."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    config: Any = None
    statistics: Any = None
    preprocessing: Any = None
    backbone: dict[str, str] | None = None  # `name` and `revision` (a `FrozenBackbone.identity`)
    source_dataset: str | None = None
    backbones: list[dict[str, Any]] | None = None  # several distillation backbones (`FrozenBackbones.descriptions`)
    other_statistics: dict[str, Any] | None = None  # the other backbones' statistics, by short name

    @classmethod
    def from_run(
        cls,
        images: torch.Tensor,
        labels: torch.Tensor,
        config: dict[str, Any],
        real_data: RealData,
        backbones: FrozenBackbones,
        statistics: Any,
        image_size: int,
    ) -> DistilledSet:
        """The set a run over `real_data` and `backbones` made, its `config` with the sizes it used (`image_size`,
        the primary's input as `crop_size`), the primary's preprocessing and identity, and every backbone with its
        statistics (`statistics`: one per backbone, or the primary's alone)."""
        primary = backbones.primary
        crops = {member.preprocessing.crop_size for member in backbones.members}
        # The crop every backbone ran at; backbones at their own sizes keep the run's setting (None), so a reopened
        # run (`Distiller.from_run`) feeds each backbone as the run did.
        crop_size = primary.preprocessing.crop_size if len(crops) == 1 else config.get("crop_size")
        config = dict(config, image_size=image_size, crop_size=crop_size)
        statistics = list(statistics) if isinstance(statistics, list | tuple) else [statistics]
        others = {
            member.short_name: each
            for member, each in zip(backbones.members[1:], statistics[1:], strict=False)
            if each is not None
        }
        parts = (config, statistics[0], primary.preprocessing, primary.identity, real_data.source_name)
        return cls(
            images, labels, real_data.class_names, *parts, backbones=backbones.descriptions(), other_statistics=others
        )

    def dataset(self) -> datasets.Dataset:
        """A `datasets.Dataset` with `image` (`Image`) and `label` (`ClassLabel`) columns."""
        return distilled_dataset(self.images, self.labels, self.class_names)

    def save(
        self, path: Path, metrics: Any = None, overwrite: bool = False, flag: str = OVERWRITE_FLAG, **card_kwargs: Any
    ) -> Path:
        """The folder `load_dataset(path)` and `load_from_disk(path)` read back, with its card (see `export`)."""
        card_kwargs.setdefault("source_dataset", self.source_dataset)
        if self.backbones and len(self.backbones) > 1:  # the card lists every backbone the set was made for
            card_kwargs.setdefault("backbones", self.backbones)
        return save_distilled(
            path,
            images=self.images,
            labels=self.labels,
            class_names=self.class_names,
            config=self.config,
            statistics=self.statistics,
            other_statistics=self.other_statistics,
            preprocessing=self.preprocessing,
            backbone=(self.backbone or {}).get("name", ""),
            backbone_revision=(self.backbone or {}).get("revision") or None,
            metrics=metrics,
            overwrite=overwrite,
            flag=flag,
            **card_kwargs,
        )

    def save_grid(self, path: str | Path, overwrite: bool = False, flag: str = OVERWRITE_FLAG) -> Path:
        """The labelled PNG grid at `path` (a file: an existing one must be hf_sfm's, or `overwrite`)."""
        from .visualization import save_image_grid

        return save_image_grid(self.images, self.labels, self.class_names, path, overwrite, flag)


@dataclass(frozen=True)
class HubTarget:
    """The repos a push goes to and its options, checked (`resolve`) before anything is written."""

    dataset_repo_id: str
    classifier_repo_id: str | None
    private: bool
    token: str | None
    revision: str | None
    create_pr: bool
    commit_message: str | None

    @classmethod
    def resolve(
        cls,
        args,
        dataset_repo_id: str | None,
        classifier_repo_id: str | None,
        classifier: Any,
        *,
        private: bool | None,
        token: str | None,
        revision: str | None,
        create_pr: bool,
        commit_message: str | None,
    ) -> HubTarget:
        """The given values, else `args.hub_*`; refuses a missing or malformed repo, a classifier without a repo
        (or a repo without a classifier: pushing never trains one), and `create_pr` with a revision."""
        repo_id = dataset_repo_id if dataset_repo_id is not None else args.hub_dataset_id
        classifier_repo_id = classifier_repo_id if classifier_repo_id is not None else args.hub_model_id
        if repo_id is None:
            raise ValueError("push_to_hub needs a dataset repo: set args.hub_dataset_id or pass dataset_repo_id=.")
        hub.check_repo_id(repo_id)
        if classifier_repo_id is not None:
            hub.check_repo_id(classifier_repo_id)
            if classifier is None:
                raise ValueError(
                    f"A classifier repo ({classifier_repo_id!r}) was given but no classifier: pushing never trains "
                    "one. Build it first (`inheritance = distiller.classifier_inheritance()`, `train_head()`, "
                    "`fit_projector(...)`, `classifier()`) and pass classifier=, or drop hub_model_id."
                )
        elif classifier is not None:
            raise ValueError("classifier= was given but no model repo: set args.hub_model_id or classifier_repo_id=.")
        if create_pr and revision not in (None, "main"):
            raise ValueError("create_pr=True opens a pull request against the default branch; do not pass revision.")
        return cls(
            repo_id,
            classifier_repo_id,
            bool(args.hub_private_repo if private is None else private),
            token or args.hub_token,
            revision or args.hub_revision,
            create_pr,
            commit_message,
        )

    def folder(self, local_dir: Path, repo_id: str) -> Path:
        return local_dir / repo_id.split("/")[-1]

    def push(
        self,
        dataset_folder: Path,
        local_dir: Path,
        classifier: Any = None,
        metrics: Any = None,
        card_kwargs: dict[str, Any] | None = None,
        overwrite: bool = False,
        flag: str = OVERWRITE_FLAG,
    ) -> dict[str, Any]:
        """Write the classifier's folder (if any) and push both folders, one commit per repo (main process only).

        Returns `{"dataset": CommitInfo, "classifier": CommitInfo | None}`."""
        card_kwargs = card_kwargs or {}
        options = dict(
            private=self.private,
            token=self.token,
            revision=self.revision,
            commit_message=self.commit_message,
            create_pr=self.create_pr,
        )
        classifier_folder = None
        if classifier is not None:
            classifier_folder = save_classifier(
                self.folder(local_dir, self.classifier_repo_id),
                classifier,
                metrics=metrics,
                repo_id=self.classifier_repo_id,
                distilled_repo_id=self.dataset_repo_id,
                source_dataset=card_kwargs.get("source_dataset"),
                license=card_kwargs.get("license"),
                record=card_kwargs.get("record"),
                overwrite=overwrite,
                flag=flag,
            )
        commits: dict[str, Any] = {"dataset": hub.push_distilled(dataset_folder, self.dataset_repo_id, **options)}
        commits["classifier"] = (
            hub.push_classifier(classifier_folder, self.classifier_repo_id, **options) if classifier_folder else None
        )
        return commits
