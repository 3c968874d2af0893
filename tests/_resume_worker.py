"""Subprocess for tests/test_resume.py: one distillation run of a tiny ViT on a toy dataset.

    python tests/_resume_worker.py OUTPUT_DIR [--save_steps N] [--resume latest] [--seconds_per_step S]
                                   [--start_after F]

Writes `OUTPUT_DIR/result.safetensors` (final images and losses) when the run completes. `--seconds_per_step`
slows every step down so that the test can SIGKILL the process between two checkpoints. `--start_after` waits,
imports done, until the file F exists: the test starts the resuming process while the other still runs.
"""

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import torch
from conftest import build_backbone, color_dataset
from safetensors.torch import save_file
from transformers import ViTImageProcessor

from hf_sfm import DistillationConfig, Distiller

torch.set_num_threads(1)  # the same thread count in every run: bit-exact comparisons

parser = argparse.ArgumentParser()
parser.add_argument("output_dir")
parser.add_argument("--num_steps", type=int, default=8)
parser.add_argument("--save_steps", type=int, default=0)
parser.add_argument("--resume", default=None)
parser.add_argument("--seconds_per_step", type=float, default=0.0)
parser.add_argument("--start_after", type=Path, default=None)
options = parser.parse_args()

deadline = time.monotonic() + 240
while options.start_after is not None and not options.start_after.exists():
    assert time.monotonic() < deadline, f"no {options.start_after} within 240 s"
    time.sleep(0.02)

processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
args = DistillationConfig(
    output_dir=options.output_dir,
    num_steps=options.num_steps,
    save_steps=options.save_steps,
    resume_from_checkpoint=options.resume,
    ipc=2,
    pyramid_level_every=3,  # levels are added across the checkpoints: the optimiser is rebuilt after a resume
    learning_rate=0.05,
    save_grid=False,
)


def slow_cls_token(model, pixel_values):
    time.sleep(options.seconds_per_step)
    return model(pixel_values=pixel_values).last_hidden_state[:, 0]


distiller = Distiller(
    build_backbone("vit"),
    args,
    color_dataset(num_classes=3, per_class=6),
    image_processor=processor,
    feature_fn=slow_cls_token,
)
distiller.train()
save_file(
    {
        "images": distiller.synthetic_images().contiguous(),
        "losses": torch.tensor(distiller.losses, dtype=torch.float64),
    },
    str(Path(options.output_dir) / "result.safetensors"),
)
