"""Callbacks, state and control of a distillation run, as `transformers.Trainer` has them.

The three objects are transformers' own: a callback is a `TrainerCallback` (so a callback written for `Trainer`
plugs in as it is), the state a `TrainerState` (`global_step`, `max_steps`, `log_history`, …; saved as
`trainer_state.json`), the control a `TrainerControl` (`should_training_stop`, `should_log`, `should_save`,
`should_evaluate`). The loop calls the hooks; nothing outside reaches into the loop.

Events: `on_train_begin`, `on_step_begin`, `on_step_end`, `on_log`, `on_save`, `on_evaluate`, `on_train_end`.
Keyword arguments every hook receives: `model` (the frozen backbone), `processing_class` (its image processor),
`optimizer`, `synthetic` (the `SyntheticImages` module), plus `logs` / `metrics` where they apply.

`DistillerFlowCallback` (always first) turns `logging_steps`, `save_steps` and `eval_steps` into control flags,
as `DefaultFlowCallback` does for `Trainer`; `ProgressCallback` draws the progress bar on the main process.
`TrackersCallback` and `GridCallback` report to the trackers and draw the periodic grids, as `Trainer`'s
integrations do, so the loop itself only calls hooks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import TrainerCallback, TrainerControl, TrainerState

from ..utils.io_utils import make_owned_dirs, record_owned
from .tracking import TRACKER_PROJECT, close_trackers, log_grid, start_trackers

__all__ = [
    "CallbackHandler",
    "DistillerFlowCallback",
    "GridCallback",
    "ProgressCallback",
    "TrackersCallback",
    "TrainerCallback",
    "TrainerControl",
    "TrainerState",
]

EVENTS = (
    "on_train_begin",
    "on_step_begin",
    "on_step_end",
    "on_log",
    "on_save",
    "on_evaluate",
    "on_train_end",
)


def new_state(args, accelerator: Accelerator) -> TrainerState:
    """A run's fresh `TrainerState`. Its `max_steps` (from `args.num_steps`) is the one number of steps the loop
    and every callback read."""
    return TrainerState(
        max_steps=args.num_steps,
        logging_steps=args.logging_steps,
        save_steps=args.save_steps,
        eval_steps=args.eval_steps,
        is_local_process_zero=accelerator.is_local_main_process,
        is_world_process_zero=accelerator.is_main_process,
    )


class DistillerFlowCallback(TrainerCallback):
    """Sets `should_log` / `should_save` / `should_evaluate` every `logging_steps` / `save_steps` / `eval_steps`
    (and evaluates the last step when a best step is selected, so it competes)."""

    def on_step_end(self, args, state: TrainerState, control: TrainerControl, **kwargs: Any) -> TrainerControl:
        step, last = state.global_step, state.global_step == state.max_steps
        if args.logging_steps and (step % args.logging_steps == 0 or last):
            control.should_log = True
        if args.save_steps and (step % args.save_steps == 0 or last):
            control.should_save = True
        if getattr(args, "eval_steps", 0) and (step % args.eval_steps == 0 or (last and _selects_best(args))):
            control.should_evaluate = True  # the last step competes for the best step too
        return control


class ProgressCallback(TrainerCallback):
    """A tqdm bar over the steps on the local main process; the latest logged loss as its postfix."""

    def __init__(self):
        self.bar: tqdm | None = None

    def on_train_begin(self, args, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if state.is_local_process_zero:
            method = getattr(args, "method", "")
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=f"Distilling ({method})")

    def on_step_end(self, args, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state: TrainerState, control: TrainerControl, logs=None, **kwargs: Any) -> None:
        """Show the logs above the bar (as `Trainer` does), so `logging_steps` is visible from Python too."""
        if self.bar is None or not logs:
            return
        if "loss" in logs:
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}")
        self.bar.write(str({key: _short(value) for key, value in logs.items()}))

    def on_train_end(self, args, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class CallbackHandler:
    """Calls every callback's hook in order; a hook may return a new `TrainerControl` (as in `Trainer`). Every hook
    is also given `model` (the frozen backbone) and `processing_class`, as `transformers.CallbackHandler` does."""

    def __init__(
        self,
        callbacks: list[TrainerCallback | type[TrainerCallback]] | None = None,
        model: Any = None,
        processing_class: Any = None,
    ):
        self.model, self.processing_class = model, processing_class
        self.callbacks: list[TrainerCallback] = []
        for callback in [DistillerFlowCallback, ProgressCallback, *(callbacks or [])]:
            self.add_callback(callback)

    def add_callback(self, callback: TrainerCallback | type[TrainerCallback]) -> None:
        instance = callback() if isinstance(callback, type) else callback
        if not isinstance(instance, TrainerCallback):
            raise TypeError(
                f"Callbacks must be `transformers.TrainerCallback` instances or classes, got {type(instance).__name__}."
            )
        self.callbacks.append(instance)

    def pop_callback(self, callback: TrainerCallback | type[TrainerCallback]) -> TrainerCallback | None:
        for instance in self.callbacks:
            if instance is callback or (isinstance(callback, type) and isinstance(instance, callback)):
                self.callbacks.remove(instance)
                return instance
        return None

    def call_event(self, event: str, args, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if event not in EVENTS:
            raise ValueError(f"Unknown callback event {event!r}; the loop calls {EVENTS}.")
        kwargs = {"model": self.model, "processing_class": self.processing_class, **kwargs}
        for callback in self.callbacks:
            result = getattr(callback, event)(args, state, control, **kwargs)
            if result is not None:
                control = result
        return control


def _selects_best(args) -> bool:
    return getattr(args, "metric_for_best_model", None) is not None


def _short(value: Any) -> Any:
    return float(f"{value:.4g}") if isinstance(value, float) else value


class TrackersCallback(TrainerCallback):
    """Starts the accelerator's trackers when training begins (`args.report_to`, `run_name`; logs under
    `<output_dir>/hf_sfm`), sends them every numeric log, finishes them at the end (the files complete; logs after
    training, such as a final `evaluate()`, then reach the callbacks only)."""

    def __init__(self, accelerator: Accelerator):
        self.accelerator = accelerator

    def on_train_begin(self, args, state, control, **kwargs: Any) -> None:
        start_trackers(self.accelerator, args.to_dict(), args.run_name)
        logs = Path(args.output_dir) / TRACKER_PROJECT
        if self.accelerator.is_main_process and logs.is_dir():
            record_owned(logs, container=True)  # the trackers' own logs

    def on_log(self, args, state, control, logs=None, **kwargs: Any) -> None:
        numeric = {k: v for k, v in (logs or {}).items() if isinstance(v, int | float) and not isinstance(v, bool)}
        if numeric and self.accelerator.trackers:
            self.accelerator.log(numeric, step=state.global_step)

    def on_train_end(self, args, state, control, **kwargs: Any) -> None:
        close_trackers(self.accelerator)


class GridCallback(TrainerCallback):
    """Every `args.grid_steps` steps, the labelled grid of the synthetic images to `<output_dir>/grids/` and the
    trackers.

    `images()` returns the current `(N, 3, S, S)` set (a collective while the set is sharded, so every process
    calls it; the main process writes)."""

    def __init__(self, accelerator: Accelerator, images, labels, class_names: list[str]):
        self.accelerator, self.images, self.labels, self.class_names = accelerator, images, labels, class_names

    def on_step_end(self, args, state, control, **kwargs: Any) -> None:
        step = state.global_step
        if not args.grid_steps or step % args.grid_steps:
            return
        images = self.images()
        if self.accelerator.is_main_process:
            output_dir = Path(args.output_dir)
            path = make_owned_dirs(output_dir / "grids", root=output_dir) / f"step-{step:07d}.png"
            log_grid(self.accelerator, images, self.labels, self.class_names, path, step, args.overwrite_output_dir)
