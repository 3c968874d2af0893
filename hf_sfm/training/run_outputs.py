"""The output directory of one run: checked and locked before any work, and the files `Trainer` users expect in it.

Every process learns whether the lock was taken (a collective), so a second run in the same `output_dir` is
refused at once on every process instead of after its statistics pass, and no process is left waiting in a
collective the others skipped. Metrics and state files are written atomically by the main process.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from transformers import TrainerState

from ..data.columns import image_file_paths
from ..publishing.distilled_set import DistilledSet, HubTarget
from ..publishing.export import DISTILLED_DIR
from ..utils.io_utils import atomic_path, make_owned_dirs
from .checkpointing import resolve_checkpoint
from .outputs import (
    GRID_FILE,
    STATE_FILE,
    OutputDirectoryBusy,
    OutputLock,
    check_output_dir,
    scoped_overwrite,
    warn_if_beside_training_images,
)
from .run_state import RunCheckpointer
from .tracking import format_metrics, write_metrics


class RunOutputs:
    """`args.output_dir` of a run: refused now if it holds another run's files (unless `args.overwrite_output_dir`,
    or the run resumes), or resuming from a checkpoint that is not there; a warning when it holds the training
    images themselves (`real_data`)."""

    def __init__(self, accelerator: Accelerator, args, real_data=None):
        self.accelerator, self.args, self.output_dir = accelerator, args, Path(args.output_dir)
        check_output_dir(self.output_dir, self.overwrite, bool(args.resume_from_checkpoint))
        resolve_checkpoint(args.resume_from_checkpoint, self.output_dir)  # no checkpoint: refused before any pass
        if real_data is not None:
            warn_if_beside_training_images(self.output_dir, image_file_paths(real_data.dataset, real_data.image_column))
        self.lock = OutputLock(self.output_dir)
        self.locked = False

    @property
    def overwrite(self) -> bool:
        """`args.overwrite_output_dir` when a file is written (as `Trainer` reads its arguments), not when built."""
        return self.args.overwrite_output_dir

    @property
    def grid_path(self) -> Path:
        return self.output_dir / GRID_FILE

    def overwrite_for(self, path: str | Path, overwrite: bool = False) -> tuple[bool, str]:
        """`(overwrite, flag)` for writing `path`: `overwrite_output_dir` reaches only inside the output dir; a path
        outside it is replaced only with the call's own `overwrite=True` (`outputs.scoped_overwrite`)."""
        return scoped_overwrite(path, self.output_dir, self.overwrite, overwrite)

    def checkpointer(self) -> RunCheckpointer:
        """The run's `checkpoint-<step>` folders in this output dir (`save_total_limit` of them kept)."""
        return RunCheckpointer(
            self.accelerator, self.output_dir, self.args.save_total_limit, overwrite=self.args.overwrite_output_dir
        )

    def hub_folder(self, local_dir: str | Path | None) -> Path:
        """Where a push's folders are written first (default `<output_dir>/hub/`, recorded as hf_sfm's)."""
        return Path(local_dir) if local_dir is not None else make_owned_dirs(self.output_dir / "hub", self.output_dir)

    def acquire(self) -> None:
        """Take the lock before writing there (a collective: every process learns whether it worked).

        Only the main process holds the lock; the others remember that their run has it, so every process returns
        early together next time (a collective entered by some processes only would hang)."""
        if self.locked:
            return
        failure: list[Any] = [None]
        if self.accelerator.is_main_process:
            try:
                self.lock.acquire()
            except OutputDirectoryBusy as error:
                failure[0] = str(error)
        if self.accelerator.num_processes > 1:
            broadcast_object_list(failure, from_process=0)
        if failure[0] is not None:
            raise OutputDirectoryBusy(failure[0])
        self.locked = True

    def format_metrics(self, split: str, metrics: dict[str, Any]) -> str:
        """The table `Trainer.log_metrics` prints (the caller logs it, under its own logger's name)."""
        return format_metrics(split, metrics)

    def save_metrics(self, split: str, metrics: dict[str, Any], combined: bool = True) -> Path | None:
        if not self.accelerator.is_main_process:
            return None
        self.lock.acquire()
        return write_metrics(self.output_dir, split, metrics, combined, overwrite=self.overwrite)

    def save_state(self, state: TrainerState) -> Path | None:
        if not self.accelerator.is_main_process:
            return None
        self.lock.acquire()
        path = self.output_dir / STATE_FILE
        with atomic_path(path, self.overwrite, "overwrite_output_dir=True") as staged:
            state.save_to_json(str(staged))
        return path

    def save_distilled(
        self,
        distilled_set: Callable[[], DistilledSet],
        path: str | Path | None = None,
        metrics: dict | None = None,
        overwrite: bool = False,
        **card_kwargs: Any,
    ) -> Path:
        """Write the set `distilled_set()` gives (a collective when sharded, made only once `path` may be written) to
        `path` (default `<output_dir>/distilled`) on the main process, under the lock; every process waits for it."""
        path = Path(path) if path is not None else self.output_dir / DISTILLED_DIR
        replace, flag = self.overwrite_for(path, overwrite)
        distilled = distilled_set()
        self.acquire()
        if self.accelerator.is_main_process:
            distilled.save(path, metrics, overwrite=replace, flag=flag, **card_kwargs)
        self.accelerator.wait_for_everyone()
        return path

    def push_to_hub(
        self,
        target: HubTarget,
        save_distilled: Callable[..., Path],
        local_dir: str | Path | None = None,
        classifier: Any = None,
        metrics: Any = None,
        card_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write the folders first (`local_dir`, default `<output_dir>/hub/`; the set's through `save_distilled`),
        then push them, one commit per repo, from the main process; every process waits for it."""
        card_kwargs = card_kwargs or {}
        local_dir = self.hub_folder(local_dir)
        folder, repo_id = target.folder(local_dir, target.dataset_repo_id), target.dataset_repo_id
        folder = save_distilled(
            folder, metrics=metrics, repo_id=repo_id, classifier_repo_id=target.classifier_repo_id, **card_kwargs
        )
        commits: dict[str, Any] = {"dataset": None, "classifier": None}
        if self.accelerator.is_main_process:
            replace, flag = self.overwrite_for(local_dir)
            commits = target.push(folder, local_dir, classifier, metrics, card_kwargs, replace, flag)
        self.accelerator.wait_for_everyone()
        return commits
