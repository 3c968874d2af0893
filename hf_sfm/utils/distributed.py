"""Several processes, one synthetic set: sharding and the two collectives SFM needs.

Each process owns a contiguous slice of the `N = C · ipc` synthetic images (`shard_range`), computes the features of
its slice only, and the per-class feature sums and counts are summed over processes (`all_reduce_sum`) before the
class means, the flow and the loss. Every process then holds the same loss, and the gradient of that loss reaches
only its own images. Because the slices are cut from a set initialised with one seed, and the augmentation draws
its randomness for all `N` images on every process (`Augmentation(..., shard=, total=)`), a run on `P` processes
optimises the same images as a run on one (to float tolerance: the sums are added in another order).

All collectives go through `accelerate` (`reduce`, `gather`, `pad_across_processes`), so the same code runs on
NCCL (GPUs) and gloo (CPUs).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import reduce


def cpu_only() -> bool:
    """True when torch sees no accelerator (GPU, XPU, MPS, ...): pass it as `Accelerator(cpu=...)`.

    `accelerate launch --multi_gpu --num_processes N` on a machine without GPUs starts N processes but sets
    `ACCELERATE_USE_CPU=False` in their environment (overriding the user's), and `--cpu` cannot be combined with
    `--multi_gpu`; each process would then believe it is alone. `Accelerator(cpu=True)` makes them one gloo group.
    """
    return not torch.accelerator.is_available()


def requested_num_processes(parent_command: list[str] | None = None) -> int | None:
    """How many processes the launch asked for, if it says: `WORLD_SIZE`, else `--num_processes N` on the command
    line of the launcher that started this process (`accelerate launch`, read from `/proc/<parent>/cmdline`)."""
    if os.environ.get("WORLD_SIZE", "").isdigit():
        return int(os.environ["WORLD_SIZE"])
    if parent_command is None:
        try:
            parent_command = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:  # not Linux, or no access: nothing to compare with
            return None
    if not any("accelerate" in Path(part).name for part in parent_command[:3]):  # accelerate / -m accelerate...
        return None
    for index, part in enumerate(parent_command):
        for flag in ("--num_processes", "--num-processes"):
            if part == flag and index + 1 < len(parent_command) and parent_command[index + 1].isdigit():
                return int(parent_command[index + 1])
            if part.startswith(flag + "=") and part.split("=", 1)[1].isdigit():
                return int(part.split("=", 1)[1])
    return None


def num_processes_warning(num_processes: int, requested: int | None = None) -> str | None:
    """A warning when fewer processes run than were asked for (`accelerate launch --cpu --num_processes 2` starts
    ONE process, silently), naming the launch that gives N CPU processes; `None` when the numbers agree."""
    requested = requested_num_processes() if requested is None else requested
    if requested is None or requested <= num_processes:
        return None
    return (
        f"{requested} processes were requested but this run has {num_processes}: `accelerate launch --cpu "
        "--num_processes N` starts one process (the --cpu launcher ignores --num_processes). For N CPU processes "
        "launch with `accelerate launch --multi_gpu --num_processes N --num_machines 1 --mixed_precision no "
        "--dynamo_backend no`; hf_sfm makes them one gloo group on a machine without GPUs."
    )


def shard_range(num_items: int, num_shards: int, index: int) -> tuple[int, int]:
    """`[start, stop)` of shard `index` when `num_items` rows are cut into `num_shards` contiguous shards.

    The first `num_items % num_shards` shards get one row more (like `numpy.array_split`).
    """
    if not 0 <= index < num_shards:
        raise ValueError(f"Shard index {index} is outside 0..{num_shards - 1}.")
    base, extra = divmod(num_items, num_shards)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes in the forward pass; the identity in the backward pass.

    The identity is the right backward here because every process computes the *same* loss from the summed
    tensor: the gradient arriving at the sum is that loss's gradient, and this process's contribution enters the
    sum with coefficient 1. (`torch.distributed.nn.all_reduce` sums the incoming gradients over processes
    instead, which is right when each process has its own loss and their sum is optimised; here it would
    multiply every gradient by the number of processes.)
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        return reduce(tensor.contiguous(), "sum")

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        return grad_output


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Differentiable sum of `tensor` (any shape, same on every process) over all processes."""
    return _AllReduceSum.apply(tensor)


def gather_shards(accelerator: Accelerator, shard: torch.Tensor, num_items: int) -> torch.Tensor:
    """Concatenate every process's shard `(n_p, ...)` along dim 0 into `(num_items, ...)`, on every process.

    Shards may differ in length by one row (`shard_range`); they are padded to the longest, gathered, and the
    padding is cut out again. A collective: every process must call it.
    """
    if accelerator.num_processes == 1:
        return shard
    longest = shard_range(num_items, accelerator.num_processes, 0)
    longest = longest[1] - longest[0]
    padded = accelerator.pad_across_processes(shard.contiguous(), dim=0)
    if padded.shape[0] != longest:
        raise RuntimeError(f"Shards of {num_items} rows should pad to {longest} rows, got {padded.shape[0]}.")
    gathered = accelerator.gather(padded)
    pieces = []
    for index in range(accelerator.num_processes):
        start, stop = shard_range(num_items, accelerator.num_processes, index)
        pieces.append(gathered[index * longest : index * longest + (stop - start)])
    return torch.cat(pieces)


def shard_parameters(levels: torch.nn.ParameterList, accelerator: Accelerator) -> tuple[int, int]:
    """Keep this process's contiguous rows `[start, stop)` of every level of an (identically initialised) set.

    Returns `(start, stop)`; with one process the whole set `(0, N)` stays.
    """
    num_images, num_processes = levels[0].shape[0], accelerator.num_processes
    if num_processes == 1:
        return 0, num_images
    if num_images < num_processes:
        raise ValueError(
            f"{num_images} synthetic images cannot be shared among {num_processes} processes (each needs at least "
            "one). Launch fewer processes or raise ipc."
        )
    start, stop = shard_range(num_images, num_processes, accelerator.process_index)
    for i, level in enumerate(levels):
        levels[i] = torch.nn.Parameter(level.detach()[start:stop].clone())
    return start, stop


def gather_parameters(levels: torch.nn.ParameterList, accelerator: Accelerator, num_images: int) -> None:
    """The inverse of `shard_parameters`: every process holds all `num_images` rows again (a collective)."""
    if accelerator.num_processes == 1:
        return
    with torch.no_grad():
        for i, level in enumerate(levels):
            levels[i] = torch.nn.Parameter(gather_shards(accelerator, level.detach(), num_images))
