"""Measure what recipes/README.md's memory section reports, on the CPU of any machine.

    python recipes/measure_memory.py sfm --num_classes 10 100        # peak of a run vs the memory model
    python recipes/measure_memory.py sfm --num_classes 100 --embed_chunk_size 16   # the same, backbone in chunks
    accelerate launch --multi_gpu --num_processes 2 recipes/measure_memory.py sfm --num_classes 100
    python recipes/measure_memory.py streaming --num_images 1000      # statistics over a stream: flat in its size
    python recipes/measure_memory.py streaming --num_images 10000
    python recipes/measure_memory.py activations                      # ViT-B/16 and DINOv2-B, one image at 224 px

Peak memory on the CPU is the process's peak resident set (`VmHWM`), reset just before the measured part by
writing 5 to `/proc/self/clear_refs` (Linux). glibc is told to return large blocks to the system at once
(`MALLOC_MMAP_THRESHOLD_`), so freed tensors do not linger in the resident set; the script re-executes itself
with that setting. Each mode prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:  # must be set before the process starts
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    os.execv(sys.executable, [sys.executable, *sys.argv])

import datasets
import numpy as np
import PIL.Image
import torch
from transformers import ViTConfig, ViTImageProcessor, ViTModel

from hf_sfm import DistillationConfig, Distiller
from hf_sfm.backbone.features import FeatureExtractor
from hf_sfm.backbone.memory import (
    checkpoint_blocks,
    checkpointed_activation_bytes,
    enable_gradient_checkpointing,
    estimate_sfm_peak_memory,
    module_bytes,
    saved_activation_bytes,
)
from hf_sfm.data.preprocessing import ImagePreprocessing

MIB = 1024**2
NORM = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def resident() -> tuple[int, int]:
    """(current, peak) resident set in bytes."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(("VmRSS", "VmHWM")):
                key, value = line.split(":")
                values[key] = int(value.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


def reset_peak() -> int:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    return resident()[0]


def toy_images(num_classes: int, per_class: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for index in range(num_classes * per_class):
        label = index % num_classes
        array = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        array[..., label % 3] //= 2
        yield {"image": PIL.Image.fromarray(array), "label": label}


def features(num_classes: int) -> datasets.Features:
    names = [f"class_{c}" for c in range(num_classes)]
    return datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})


def small_vit(crop: int) -> tuple[ViTModel, ViTImageProcessor]:
    """A ViT-Tiny-sized random backbone: big enough for activations to dominate, small enough for a CPU."""
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=crop, patch_size=16, hidden_size=192, num_hidden_layers=6, num_attention_heads=3,
        intermediate_size=768,
    )  # fmt: skip
    processor = ViTImageProcessor(size={"height": crop, "width": crop}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return ViTModel(config, add_pooling_layer=False).eval(), processor


def measure_sfm(options) -> dict:
    """Peak of `Distiller.train()` (all pyramid levels active) beyond the loaded backbone and statistics."""
    torch.set_num_threads(1)
    model, processor = small_vit(options.crop)
    train = datasets.Dataset.from_generator(
        lambda: toy_images(options.num_classes, 2, options.crop), features=features(options.num_classes)
    )
    args = DistillationConfig(
        output_dir=os.path.join(options.output_dir, f"sfm_{options.num_classes}_classes"),
        ipc=options.ipc, image_size=options.image_size, num_steps=options.steps, pyramid_level_every=1,
        save_grid=False, logging_steps=0, gradient_checkpointing=options.gradient_checkpointing,
        embed_chunk_size=options.embed_chunk_size,
    )  # fmt: skip
    full = saved_activation_bytes(
        FeatureExtractor(model, ImagePreprocessing(options.crop, options.crop, *NORM)), options.crop
    )
    distiller = Distiller(model, args, train, image_processor=processor)  # wraps the blocks if checkpointing
    distiller.compute_statistics()
    activations = full
    if options.gradient_checkpointing:
        block_inputs = saved_activation_bytes(distiller.feature_extractor, options.crop)
        activations = checkpointed_activation_bytes(full, block_inputs, len(checkpoint_blocks(model)))
    baseline = reset_peak()
    output = distiller.train()
    peak = resident()[1] - baseline
    accelerator = distiller.accelerator
    estimate = estimate_sfm_peak_memory(
        num_classes=options.num_classes, ipc=options.ipc, image_size=distiller.image_size, crop_size=options.crop,
        activation_bytes_per_image=activations, backbone_bytes=module_bytes(model),
        feature_dim=distiller.statistics.feature_dim, num_processes=accelerator.num_processes,
        embed_chunk_size=options.embed_chunk_size,
    )  # fmt: skip
    predicted = estimate.total - estimate.static  # the backbone and the statistics are in the baseline
    row = {
        "mode": "sfm",
        "process": accelerator.process_index,
        "num_processes": accelerator.num_processes,
        "num_classes": options.num_classes,
        "ipc": options.ipc,
        "image_size": distiller.image_size,
        "crop": options.crop,
        "gradient_checkpointing": options.gradient_checkpointing,
        "embed_chunk_size": options.embed_chunk_size,
        "seconds_per_step": output.metrics["train_seconds_per_step"],
        "images_per_process": estimate.images_per_process,
        "activation_mib_per_image": activations / MIB,
        "measured_peak_mib": peak / MIB,
        "predicted_peak_mib": predicted / MIB,
        "ratio_measured_over_predicted": peak / predicted,
    }
    from accelerate.utils import gather_object

    rows = gather_object([row])
    return rows if accelerator.is_main_process else None


def measure_streaming(options) -> dict:
    """Peak of class statistics over a generated stream of `num_images` images (never materialised)."""
    torch.set_num_threads(1)
    model, processor = small_vit(32)
    stream = datasets.IterableDataset.from_generator(
        toy_images, gen_kwargs={"num_classes": 10, "per_class": options.num_images // 10, "size": 64},
        features=features(10),
    )  # fmt: skip
    args = DistillationConfig(output_dir=options.output_dir, statistics_batch_size=64)
    distiller = Distiller(model, args, stream, image_processor=processor)
    baseline = reset_peak()
    start = time.perf_counter()
    statistics = distiller.compute_statistics()
    peak = resident()[1] - baseline
    return {
        "mode": "streaming",
        "num_images": int(statistics.counts.sum()),
        "measured_peak_mib": peak / MIB,
        "seconds": time.perf_counter() - start,
    }


def measure_activations(options) -> dict:
    """Saved-for-backward bytes per image through real-size backbones at 224 px (random weights: the sizes do not
    depend on them), in float32 and under bfloat16 autocast, without and with gradient checkpointing."""
    from transformers import Dinov2Config, Dinov2Model

    torch.set_num_threads(2)
    builders = {
        "ViT-B/16 (CLIP ViT-B/16 tower size, 197 tokens)": lambda: ViTModel(ViTConfig(), add_pooling_layer=False),
        "DINOv2-B/14 (257 tokens)": lambda: Dinov2Model(Dinov2Config(image_size=224)),
    }
    rows = {}
    for name, build in builders.items():
        model = build().eval()
        extractor = FeatureExtractor(model, ImagePreprocessing(224, 256, *NORM))
        full = saved_activation_bytes(extractor, 224)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            full_bf16 = saved_activation_bytes(extractor, 224)
        blocks = enable_gradient_checkpointing(extractor.model)
        inputs = saved_activation_bytes(extractor, 224)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            inputs_bf16 = saved_activation_bytes(extractor, 224)
        rows[name] = {
            "backbone_mib": module_bytes(model) / MIB,
            "feature_dim": extractor(torch.zeros(1, 3, 224, 224)).shape[1],
            "blocks": blocks,
            "activation_mib_per_image": {
                "fp32": full / MIB,
                "bf16": full_bf16 / MIB,
                "fp32_checkpointed": checkpointed_activation_bytes(full, inputs, blocks) / MIB,
                "bf16_checkpointed": checkpointed_activation_bytes(full_bf16, inputs_bf16, blocks) / MIB,
            },
        }
    return {"mode": "activations", "backbones": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["sfm", "streaming", "activations"])
    parser.add_argument("--num_classes", type=int, nargs="+", default=[10], help="sfm: one measurement for each")
    parser.add_argument("--ipc", type=int, default=1)
    parser.add_argument("--crop", type=int, default=112)
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=9)
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--embed_chunk_size", type=int, default=None, help="sfm: backbone chunks (embed_in_chunks)")
    parser.add_argument("--num_images", type=int, default=1000)
    parser.add_argument("--output_dir", default=None)
    options = parser.parse_args()
    if options.output_dir is None:
        import tempfile

        options.output_dir = tempfile.mkdtemp(prefix="hf_sfm_memory_")
    measure = {"sfm": measure_sfm, "streaming": measure_streaming, "activations": measure_activations}[options.mode]
    for num_classes in options.num_classes if options.mode == "sfm" else [None]:
        result = measure(argparse.Namespace(**{**vars(options), "num_classes": num_classes}))
        if result is not None:
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
