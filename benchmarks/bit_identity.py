"""Digests of everything a run produces, to prove a refactor changed nothing (bit-identical, not "close").

    python benchmarks/bit_identity.py --output before.json            # on the old commit
    python benchmarks/bit_identity.py --output after.json --compare before.json

Runs, on the public API only (so the same script runs before and after a refactor): a tiny random ViT on a
colour-coded in-memory dataset (statistics, 12 SFM steps, evaluation with every baseline, a saved classifier from
classifier inheritance) and, with `--demo`, the embedded default's distillation (MNIST, EfficientNet-Lite0) with a
short probe. Each artefact is reduced to the SHA-256 of its bytes; `--compare` prints the artefacts that differ
and exits non-zero if any does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import datasets
import numpy as np
import PIL.Image
import torch
from safetensors.torch import load_file
from transformers import ViTConfig, ViTImageProcessor, ViTModel

from hf_sfm import DistillationConfig, Distiller


def digest(value) -> str:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().contiguous()
        return hashlib.sha256(
            value.numpy().tobytes() + str(value.dtype).encode() + str(tuple(value.shape)).encode()
        ).hexdigest()
    if isinstance(value, dict):
        return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
    return hashlib.sha256(bytes(value)).hexdigest()


def colour_dataset(num_classes: int = 3, per_class: int = 8, size: int = 32, seed: int = 0) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for c in range(num_classes):
        for _ in range(per_class):
            array = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
            array[..., c % 3] += 140
            images.append(PIL.Image.fromarray(array))
            labels.append(c)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[f"class_{c}" for c in range(num_classes)])}
    )
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


def logits_fingerprint(prediction) -> dict:
    """`compute_metrics` that keeps top-1 and a fingerprint of every logit: two probes agree on it only if they
    produced the same logits, which accuracy alone (often at chance on a short probe) would not show."""
    logits = torch.as_tensor(np.asarray(prediction.predictions), dtype=torch.float64)
    labels = torch.as_tensor(np.asarray(prediction.label_ids))
    weights = torch.arange(1, logits.numel() + 1, dtype=torch.float64).reshape(logits.shape)
    return {
        "accuracy": float((logits.argmax(-1) == labels).double().mean()),
        "logits_fingerprint": float((logits * weights).sum()),
    }


def run(distiller: Distiller, evaluate_kwargs: dict, prefix: str, out: dict) -> None:
    statistics = distiller.compute_statistics()
    out[f"{prefix}/statistics.means"] = digest(statistics.class_means)
    out[f"{prefix}/statistics.counts"] = digest(statistics.counts)
    train = distiller.train()
    out[f"{prefix}/losses"] = digest({"losses": distiller.losses})
    out[f"{prefix}/train_loss"] = repr(train.training_loss)
    out[f"{prefix}/images"] = digest(distiller.synthetic_images())
    metrics = distiller.evaluate(**evaluate_kwargs)
    scores = {k: v for k, v in metrics.items() if "accuracy" in k or "fingerprint" in k}
    out[f"{prefix}/eval_scores"] = digest(scores)
    out[f"{prefix}/eval_scores_plain"] = scores


def tiny(out: dict, work: Path) -> None:
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    model = ViTModel(config, add_pooling_layer=False).eval()
    processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    train, test = colour_dataset(seed=0), colour_dataset(per_class=4, seed=1)
    args = DistillationConfig(
        output_dir=str(work / "tiny"),
        ipc=1,
        num_steps=12,
        crop_size=32,
        image_size=32,
        eval_runs=2,
        probe_epochs=30,
        logging_steps=5,
        save_steps=6,
        save_grid=False,
    )
    distiller = Distiller(
        model=model,
        args=args,
        train_dataset=train,
        image_processor=processor,
        eval_dataset=test,
        compute_metrics=logits_fingerprint,
    )
    baselines = ["random_real", "centroids", "near_mean", "neighbors", "full_dataset"]
    run(distiller, {"baselines": baselines}, "tiny", out)
    inheritance = distiller.classifier_inheritance()
    inheritance.train_head(epochs=5)
    inheritance.fit_projector(distiller.synthetic_images(), epochs=5)
    classifier = inheritance.classifier()
    classifier.save_pretrained(work / "classifier")
    weights = load_file(work / "classifier" / "model.safetensors")
    for name in sorted(weights):
        if not name.startswith("backbone."):
            out[f"tiny/classifier/{name}"] = digest(weights[name])


def demo(out: dict, work: Path) -> None:
    from transformers import AutoImageProcessor, AutoModel

    from hf_sfm.assets import efficientnet_lite_path, load_mnist

    path = efficientnet_lite_path("lite0")
    mnist = load_mnist()
    args = DistillationConfig(
        output_dir=str(work / "demo"), crop_size=64, image_size=64, eval_runs=1, probe_epochs=20, save_grid=False
    )
    distiller = Distiller(
        model=AutoModel.from_pretrained(path),
        args=args,
        train_dataset=mnist["train"],
        image_processor=AutoImageProcessor.from_pretrained(path),
        eval_dataset=mnist["test"].select(range(200)),
        compute_metrics=logits_fingerprint,
    )
    run(distiller, {"baselines": ["random_real", "centroids"]}, "demo", out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="where to write the digests (JSON)")
    parser.add_argument("--compare", help="digests of another commit to compare against")
    parser.add_argument("--demo", action="store_true", help="also the embedded default's distillation")
    options = parser.parse_args(argv)
    torch.set_num_threads(2)
    out: dict = {}
    with tempfile.TemporaryDirectory() as work:
        tiny(out, Path(work))
        if options.demo:
            demo(out, Path(work))
    Path(options.output).write_text(json.dumps(out, indent=1, sort_keys=True))
    if not options.compare:
        return 0
    before = json.loads(Path(options.compare).read_text())
    differ = sorted(k for k in before.keys() | out.keys() if before.get(k) != out.get(k))
    for key in differ:
        print(f"DIFFERS {key}: {before.get(key)} -> {out.get(key)}")
    print(
        f"{len(before.keys() & out.keys()) - len([k for k in differ if k in before and k in out])} equal, "
        f"{len(differ)} differ"
    )
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
