"""Memory of an SFM run: backbone gradient checkpointing, and a model of the peak that predicts a run's size.

Peak memory of one process during an SFM step (it occurs in the backward pass, when the graph through the
backbone is alive and the gradients of the image parameters are being written):

    peak ≈ static + n · (state + decode + activations)          n = ⌈C · ipc / P⌉ images on this process

    static      = backbone weights + real class statistics (C · D floats, a few copies)
    state       = 16 B · 3 · Σ_levels s²        image parameters, their gradient, Adam's two moments (float32)
    decode      = 4 B · (2 · 3 · S² + 2 · crop²) the decoded image and its pre-sigmoid logits (saved for backward),
                                                 the augmentation's sampling grid
    activations = what the backbone saves for the backward pass of one image at `crop` resolution

Everything per image is divided by the number of processes `P`: the synthetic set is sharded, and the only
cross-process tensors are the `(C, D)` sums. `activations` depends on the backbone and on the precision (bf16
halves it) and shrinks to `1/L` of itself plus the block inputs with gradient checkpointing over `L` blocks
(`checkpointed_activation_bytes`); `saved_activation_bytes` measures it for any backbone, by counting what
autograd saves for a few images. With the backbone run in chunks of `k` images (`embed_in_chunks`), only one chunk's
activations are alive, plus every image's backbone input.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..synthesis.synthetic import pyramid_sizes

FLOAT_BYTES = 4


# ---------------------------------------------------------------------------------------------- gradient checkpointing


def checkpoint_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks to recompute in the backward pass: transformers' `GradientCheckpointingLayer`s (ViT, DINOv2, CLIP,
    SigLIP, …) or, for models without them (ResNet, ConvNeXt, EfficientNet, timm), the entries of the largest
    `nn.ModuleList` (their stages or blocks)."""
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:  # pragma: no cover — older transformers
        GradientCheckpointingLayer = ()
    layers = [
        module
        for module in model.modules()
        if GradientCheckpointingLayer and isinstance(module, GradientCheckpointingLayer)
    ]
    if layers:
        return layers
    lists = [module for module in model.modules() if isinstance(module, nn.ModuleList) and len(module) > 1]
    if not lists:
        return []
    return list(max(lists, key=lambda blocks: sum(p.numel() for p in blocks.parameters())))


def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Recompute each block of the frozen `model` in the backward pass instead of keeping its activations.

    transformers' own `gradient_checkpointing_enable()` only acts in training mode, and a frozen backbone stays in
    eval mode (BatchNorm statistics and dropout must not move), so the blocks' `forward` is wrapped here with
    non-reentrant `torch.utils.checkpoint`, active whenever gradients are recorded. Values and gradients are
    unchanged; memory drops from all activations to the block inputs plus one block's activations. Returns the
    number of blocks wrapped (0: nothing found to checkpoint).
    """
    blocks = checkpoint_blocks(model)
    for block in blocks:
        if getattr(block, "_hf_sfm_checkpointed", False):
            continue
        forward = block.forward

        def checkpointed_forward(*args, _forward=forward, **kwargs):
            if torch.is_grad_enabled():
                return torch.utils.checkpoint.checkpoint(_forward, *args, use_reentrant=False, **kwargs)
            return _forward(*args, **kwargs)

        block.forward = checkpointed_forward
        block._hf_sfm_checkpointed = True
    return len(blocks)


def embed_in_chunks(
    embed: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, chunk_size: int | None
) -> torch.Tensor:
    """`embed(images)` computed `chunk_size` images at a time, each chunk under activation checkpointing.

    The forward pass keeps only each chunk's input; the backward pass recomputes one chunk's graph, backpropagates
    it and frees it before the next. The gradient is the one of `embed(images)` (the frozen backbone in eval mode
    is deterministic, and checkpointing restores the random state), at the cost of a second forward pass. Losses
    that couple all images (SFM's class means) need the features of every image before any gradient exists, which
    is why chunking is done here, through autograd, and not by splitting the loss.
    """
    if chunk_size is None or chunk_size >= len(images) or not torch.is_grad_enabled():
        return embed(images)
    from torch.utils.checkpoint import checkpoint

    chunks = [
        checkpoint(embed, images[start : start + chunk_size], use_reentrant=False)
        for start in range(0, len(images), chunk_size)
    ]
    return torch.cat(chunks)


# ---------------------------------------------------------------------------------------------- measuring


def saved_activation_bytes(feature_extractor: nn.Module, crop_size: int, num_images: int = 2) -> int:
    """Bytes autograd keeps for the backward pass of `feature_extractor`, per image of `(3, crop, crop)`.

    Counts the distinct storages saved for backward (parameters and buffers excluded: they exist anyway) during a
    forward of `num_images` and of `2 · num_images` images that require grad, and returns the difference per
    image, so per-batch constants (e.g. the weight copies autocast makes) drop out. Runs on any device and under
    any autocast context the caller opens.
    """
    persistent = {
        t.untyped_storage().data_ptr() for t in [*feature_extractor.parameters(), *feature_extractor.buffers()]
    }
    device = next(iter(feature_extractor.buffers())).device

    def saved(count: int) -> int:
        seen: dict[int, int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in persistent:
                seen[storage.data_ptr()] = storage.nbytes()
            return tensor

        images = torch.rand(count, 3, crop_size, crop_size, device=device, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            feature_extractor(images).sum()
        return sum(seen.values())

    return math.ceil((saved(2 * num_images) - saved(num_images)) / num_images)


def checkpointed_activation_bytes(full: int, block_inputs: int, num_blocks: int) -> int:
    """Per-image activation bytes with gradient checkpointing over `num_blocks` blocks: the saved block inputs
    plus one block's activations, alive while that block is recomputed in the backward pass."""
    return block_inputs + math.ceil(full / max(1, num_blocks))


# ---------------------------------------------------------------------------------------------- the model


def parameter_elements(image_size: int, parameterization: str = "pyramid") -> int:
    """Floats per synthetic image in its parameterisation: `3 · Σ s²` over pyramid levels, or `3 · S²`."""
    sizes = pyramid_sizes(image_size) if parameterization == "pyramid" else [image_size]
    return 3 * sum(size * size for size in sizes)


@dataclass
class MemoryEstimate:
    """Peak bytes of one process, by term (see the module docstring)."""

    images_per_process: int
    static: int
    state: int
    decode: int
    activations: int

    @property
    def total(self) -> int:
        return self.static + self.state + self.decode + self.activations


def estimate_sfm_peak_memory(
    *,
    num_classes: int,
    ipc: int,
    image_size: int,
    crop_size: int,
    activation_bytes_per_image: int,
    backbone_bytes: int,
    feature_dim: int,
    num_processes: int = 1,
    parameterization: str = "pyramid",
    embed_chunk_size: int | None = None,
) -> MemoryEstimate:
    """Predicted peak memory of one process in an SFM step (the formula of the module docstring).

    With `embed_chunk_size` (`embed_in_chunks`), only one chunk's activations are alive, plus every image's
    backbone input (`3 · crop²` floats), which the checkpoints keep.
    """
    images = math.ceil(num_classes * ipc / num_processes)
    graph_images = images if embed_chunk_size is None else min(images, embed_chunk_size)
    kept_inputs = 0 if graph_images == images else images * FLOAT_BYTES * 3 * crop_size**2
    # Statistics: float64 sums + float32 means, flow, synthetic sums and flow with their gradients.
    statistics = num_classes * feature_dim * (8 + 6 * FLOAT_BYTES)
    return MemoryEstimate(
        images_per_process=images,
        static=backbone_bytes + statistics,
        state=images * 4 * FLOAT_BYTES * parameter_elements(image_size, parameterization),
        decode=images * FLOAT_BYTES * (2 * 3 * image_size**2 + 2 * crop_size**2),
        activations=graph_images * activation_bytes_per_image + kept_inputs,
    )


def module_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
