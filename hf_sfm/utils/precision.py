"""Mixed precision of one run, owned by the run rather than by Accelerate's process-wide state.

Accelerate fixes the precision once per process: a second `Accelerator(mixed_precision=...)` with another value
fails ("restart your runtime"), so a notebook could not run a bf16 distillation after an fp32 one. The `Distiller`
therefore leaves Accelerate's precision alone and autocasts itself: `torch.autocast` for the backbone's forward,
and for fp16 a `GradScaler` that skips steps with overflowing gradients.
"""

from __future__ import annotations

import contextlib

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """`autocast()`, `backward(loss)` and `step(optimizer)` for `mode` in `"no"`, `"bf16"`, `"fp16"` on `device`."""

    def __init__(self, mode: str, device: torch.device):
        self.mode = mode
        self.device = torch.device(device)
        self.dtype = DTYPES.get(mode)
        self.scaler = torch.amp.GradScaler(self.device.type) if mode == "fp16" else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:  # fp16: unscale, skip a step whose gradients overflowed
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
