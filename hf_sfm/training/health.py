"""Run-health checks: a run that cannot be learning says so, instead of finishing with useless images.

A non-finite loss stops the run, naming the first bad step. A loss stuck at exactly 1 (the synthetic flow is
zero: the backbone's features ignore the images) and images pushed into saturation (a learning rate far too high)
are warned about once each. The checks read the loss curve the loop keeps on the device, so they cost one host
sync, at logging and saving steps only.
"""

from __future__ import annotations

import torch
from accelerate.logging import get_logger

logger = get_logger(__name__)


@torch.no_grad()
def saturation(synthetic: torch.nn.Module) -> float:
    """The fraction of decoded pixels within 1e-3 of 0 or 1."""
    images = synthetic.decode()
    return float(((images < 1e-3) | (images > 1 - 1e-3)).float().mean())


class RunHealth:
    """The health checks of one run (`method`, its learning rates and `ipc`, the `backbone`'s name for messages)."""

    def __init__(self, method: str, learning_rate: float, effective_learning_rate: float, ipc: int, backbone: str):
        self.method, self.ipc, self.backbone = method, ipc, backbone
        self.learning_rate, self.effective_learning_rate = learning_rate, effective_learning_rate
        self.warned: set[str] = set()
        self.initial_saturation = 0.0

    def start(self, synthetic: torch.nn.Module) -> None:
        """Forget earlier warnings and note the starting saturation (MNIST digits start mostly at 0: only a rise
        counts)."""
        self.warned = set()
        self.initial_saturation = saturation(synthetic)

    def check(self, losses: torch.Tensor, synthetic: torch.nn.Module) -> None:
        self.check_finite(losses)
        self.warn_if_degenerate(losses, synthetic)

    def check_finite(self, losses: torch.Tensor) -> None:
        """Refuse a non-finite loss, naming the first step that had one."""
        finite = torch.isfinite(losses)
        if bool(finite.all()):
            return
        step = int((~finite).nonzero()[0])
        raise FloatingPointError(
            f"The {self.method} loss became {float(losses[step])} at step {step}. Likely causes: features "
            "overflowing in reduced precision (try mixed_precision='no'), or a learning rate too high."
        )

    @torch.no_grad()
    def warn_if_degenerate(self, losses: torch.Tensor, synthetic: torch.nn.Module) -> None:
        """Warn (once per kind) about a loss stuck at exactly 1 or images pushed into saturation."""
        if "constant" not in self.warned and len(losses) >= 2 and bool((losses == 1.0).all()):
            self.warned.add("constant")
            logger.warning(
                f"The loss has been exactly 1.0 for all {len(losses)} steps: the synthetic flow is zero, i.e. "
                f"{self.backbone}'s features do not change with the images (all zero or constant), and nothing is "
                "being learned. Check the backbone's weights and pooled output.",
                main_process_only=True,
            )
        saturated = saturation(synthetic)
        if "saturated" not in self.warned and saturated > 0.5 and saturated - self.initial_saturation > 0.25:
            self.warned.add("saturated")
            rate = f"learning_rate={self.learning_rate}"
            if self.effective_learning_rate != self.learning_rate:  # scaled by 1 / ipc
                rate += f", {self.effective_learning_rate:.3g} at ipc {self.ipc}"
            logger.warning(
                f"{100 * saturated:.0f}% of the synthetic pixels are saturated at 0 or 1 (at the start: "
                f"{100 * self.initial_saturation:.0f}%): the images have been pushed out of range, most likely by a "
                f"learning rate far too high ({rate}). Lower learning_rate.",
                main_process_only=True,
            )


def warn_if_pyramid_incomplete(synthetic, num_steps: int, level_every: int) -> None:
    """Warn when `num_steps` ends before every pyramid level has joined (the finer detail stays as initialised)."""
    levels_reached = 1 + (num_steps - 1) // level_every
    if not synthetic.fully_grown and levels_reached < synthetic.max_levels:
        logger.warning(
            f"With num_steps={num_steps} and pyramid_level_every={level_every}, only {levels_reached} of "
            f"{synthetic.max_levels} pyramid levels will be trained; the finer detail stays at its initial value. "
            "Lower pyramid_level_every or raise num_steps.",
            main_process_only=True,
        )
