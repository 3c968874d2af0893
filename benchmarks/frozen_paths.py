"""Every frozen, no-grad forward path of hf_sfm against the best plain loop on the same model, side by side (issue 23).

    python benchmarks/frozen_paths.py              # Lite0 at 64 px, 2048 images per path, 3 interleaved repeats
    python benchmarks/frozen_paths.py --size 128   # another resolution
    python benchmarks/frozen_paths.py --quick      # 64 images, 1 repeat: a smoke run; writes nothing by default

The goal is that every path which only reads features runs within 10 % of the best this machine does with the same
model. The reference is the best plain loop over ready tensors: the `FeatureExtractor` (channels-last model and
input) under `torch.inference_mode`, at the batch size that measured fastest here (`--batch-sizes`). Each library
path then embeds the same number of images, in one process, interleaved over `--repeats` rounds (best round per
path, since other jobs share the cores): the statistics pass (`compute_class_statistics` decoding MNIST, and
`FrozenBackbone.embed_pixels` over ready uint8 batches), a test/train feature column (`embed_dataset`), the
real-image baselines' feature column and their query (`embed_resized`), the probe's fresh views (`ViewFeatures`
look-ahead) and view bank on 10 images (ipc 1), and the projector's paired bank (two backbones, each image counted
once per backbone). Paths that decode or augment pay for it: the ratio is what a user waits for.

Every backbone forward is also checked to run under inference mode, i.e. through `frozen_features` (a path that
went around it would run under `no_grad`). A full run writes `results/frozen_paths.json`, whose table
`render_results.py` puts on RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import torch

NAME = "frozen_paths"
PROBE_IMAGES = 10  # a distilled set at ipc 1 on 10 classes: what the probe's views and banks embed
TARGET = 0.9  # the goal: every path within 10 % of the best plain loop


class InferenceModeCounter:
    """Counts the forwards of the watched extractors that ran outside inference mode (forward pre-hooks): a path
    through `frozen_features` has none."""

    def __init__(self):
        self.forwards = self.outside = 0

    def watch(self, feature_extractor: torch.nn.Module) -> None:
        feature_extractor.register_forward_pre_hook(self._hook)

    def _hook(self, module, args) -> None:
        self.forwards += 1
        self.outside += not torch.is_inference_mode_enabled()

    def take(self) -> int:
        """Forwards outside inference mode since the last `take` (`forwards` counts them all)."""
        outside, self.outside = self.outside, 0
        return outside


def plain_loop(feature_extractor, images: torch.Tensor, batch_size: int) -> None:
    """The reference: ready `[0, 1]` tensors, channels-last, inference mode, one batch size."""
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            feature_extractor(images[start : start + batch_size].contiguous(memory_format=torch.channels_last))


def plain_decoding_loop(feature_extractor, preprocessing, dataset, batch_size: int) -> None:
    """The reference for the paths that decode: the same plain loop, each batch first decoded by `datasets` (PIL)
    and resized by the backbone's preprocessing. What a hand-written loop over the dataset costs."""
    with torch.inference_mode():
        for start in range(0, len(dataset), batch_size):
            images = dataset[start : start + batch_size]["image"]
            feature_extractor(preprocessing([image.convert("RGB") for image in images]))


def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def best_batch_size(feature_extractor, images: torch.Tensor, batch_sizes: list[int], repeats: int) -> dict:
    """`{batch: images/s}` of the plain loop, best of `repeats` interleaved rounds."""
    plain_loop(feature_extractor, images[:64], 32)  # warm-up
    seconds: dict[int, list[float]] = {batch: [] for batch in batch_sizes}
    for _ in range(repeats):
        for batch in batch_sizes:
            seconds[batch].append(timed(lambda batch=batch: plain_loop(feature_extractor, images, batch)))
    return {batch: len(images) / min(times) for batch, times in seconds.items()}


class LibraryPath(NamedTuple):
    """One frozen-forward path of the library: images it embeds per run, the run, and whether it decodes images
    (then its reference is the plain loop that decodes too: the same work)."""

    forwards: int
    run: Callable[[], Any]
    decodes: bool = False


def library_paths(
    backbone, dataset, images: torch.Tensor, num_images: int, counter: InferenceModeCounter
) -> dict[str, tuple[int, Callable]]:
    """`{path: (forwards, run)}`: each library path set up to embed `num_images` images (forwards) once per run."""
    from hf_sfm.backbone.embedding import embed_dataset
    from hf_sfm.backbone.features import FeatureExtractor, frozen_features
    from hf_sfm.data.columns import MAP_BATCH_SIZE
    from hf_sfm.data.statistics import batch_class_sums, compute_class_statistics
    from hf_sfm.evaluation.baselines import RealBaselines
    from hf_sfm.evaluation.linear_fit import ViewFeatures, embed_resized
    from hf_sfm.synthesis.augment import Augmentation

    extractor, preprocessing = backbone.feature_extractor, backbone.preprocessing
    size = extractor.input_size
    class_names = dataset.features["label"].names
    labels = list(dataset["label"])
    pixels = preprocessing.pixels([image.convert("RGB") for image in dataset["image"]])  # ready uint8 batches
    probe_images = images[:PROBE_IMAGES]
    epochs = num_images // PROBE_IMAGES
    augmentation = Augmentation(size, flip=True, crop=True, noise=False)
    second = FeatureExtractor(extractor.model, preprocessing)  # the projector's other backbone (same weights here)
    counter.watch(second)

    def statistics_with_decoding():  # with a fingerprint, as the library passes it (else `datasets` pickles the model)
        compute_class_statistics(
            dataset,
            backbone.embed_pixels,
            image_column="image",
            label_column="label",
            class_names=class_names,
            preprocessing=preprocessing,
            new_fingerprint="frozen_paths-statistics",
            load_from_cache_file=False,
        )

    def statistics_over_tensors():  # the statistics pass's batches, as its map makes them
        for start in range(0, num_images, MAP_BATCH_SIZE):
            end = start + MAP_BATCH_SIZE
            batch_class_sums(pixels[start:end], labels[start:end], backbone.embed_pixels)

    def feature_column():
        embed_dataset(extractor, preprocessing, dataset, desc=None)

    def baselines_column():
        RealBaselines(dataset, extractor, preprocessing, size).features()

    def probe_views():
        views = ViewFeatures(probe_images, [extractor], augmentation, torch.Generator().manual_seed(0), epochs=epochs)
        every = torch.arange(PROBE_IMAGES)
        for epoch in range(epochs):
            views(every, epoch)

    def view_bank():
        ViewFeatures(probe_images, [extractor], augmentation, torch.Generator().manual_seed(0), views=epochs)

    def projector_bank():
        ViewFeatures(probe_images, [second, extractor], augmentation, torch.Generator().manual_seed(0), views=epochs)

    return {
        "frozen_features, ready tensors": LibraryPath(num_images, lambda: frozen_features(extractor, images)),
        "statistics pass, decoding (compute_class_statistics)": LibraryPath(
            num_images, statistics_with_decoding, decodes=True
        ),
        "statistics pass, ready uint8 tensors (embed_pixels)": LibraryPath(num_images, statistics_over_tensors),
        "test/train feature column, decoding (embed_dataset)": LibraryPath(num_images, feature_column, decodes=True),
        "baselines' feature column, decoding (RealBaselines)": LibraryPath(num_images, baselines_column, decodes=True),
        "baselines' query / no-augmentation probe (embed_resized)": LibraryPath(
            num_images, lambda: embed_resized(extractor, images)
        ),
        f"probe views, fresh, look-ahead ({PROBE_IMAGES} images)": LibraryPath(epochs * PROBE_IMAGES, probe_views),
        f"view bank ({PROBE_IMAGES} images x {epochs} views)": LibraryPath(epochs * PROBE_IMAGES, view_bank),
        f"projector's paired bank (2 backbones, {PROBE_IMAGES} x {epochs})": LibraryPath(
            2 * epochs * PROBE_IMAGES, projector_bank
        ),
    }


def cpu_backbone(options):
    """The `--variant` Lite at `--size`, prepared as a run prepares it on the CPU (`FrozenBackbone.prepare`)."""
    from transformers import AutoImageProcessor, AutoModel

    from hf_sfm.assets import efficientnet_lite_path
    from hf_sfm.backbone.frozen import FrozenBackbone

    path = efficientnet_lite_path(options.variant)
    return FrozenBackbone.prepare(
        AutoModel.from_pretrained(path),
        AutoImageProcessor.from_pretrained(path),
        crop_size=options.size,
        feature_fn=None,
        mixed_precision="no",
        gradient_checkpointing=False,
        device=torch.device("cpu"),
    )


def measure(options) -> tuple[dict, tuple]:
    """The paths' table as a record, and the `(extractor, images)` it timed (for `levers`)."""
    import datasets

    from hf_sfm.assets import load_mnist

    datasets.disable_progress_bars()
    backbone = cpu_backbone(options)
    train = load_mnist()["train"]
    dataset = train.select(range(min(options.num_images, len(train))))
    num_images = len(dataset)
    images = torch.rand(num_images, 3, options.size, options.size, generator=torch.Generator().manual_seed(0))
    extractor = backbone.feature_extractor
    counter = InferenceModeCounter()
    counter.watch(extractor)

    print(f"plain loop: batch sizes {options.batch_sizes}, {num_images} images at {options.size} px", flush=True)
    per_batch = best_batch_size(extractor, images, options.batch_sizes, options.repeats)
    best_batch = max(per_batch, key=per_batch.get)
    paths = library_paths(backbone, dataset, images, num_images, counter)
    seconds: dict[str, list[float]] = {name: [] for name in ["plain", "plain_decoding", *paths]}
    outside: dict[str, int] = {name: 0 for name in paths}
    counter.take()
    for name, (_, run, _) in paths.items():  # warm-up (and the fresh-page cost of a first call) outside the clocks
        run()
        outside[name] += counter.take()
    for round_ in range(options.repeats):
        print(f"round {round_ + 1} of {options.repeats}", flush=True)
        seconds["plain"].append(timed(lambda: plain_loop(extractor, images, best_batch)))
        seconds["plain_decoding"].append(
            timed(lambda: plain_decoding_loop(extractor, backbone.preprocessing, dataset, best_batch))
        )
        counter.take()
        for name, (_, run, _) in paths.items():
            seconds[name].append(timed(run))
            outside[name] += counter.take()
    best = num_images / min(seconds["plain"])
    best_decoding = num_images / min(seconds["plain_decoding"])
    rows = [
        {
            "path": f"plain loop (channels-last, inference_mode, batch {best_batch})",
            "images": num_images,
            "images_per_second": best,
            "ratio_to_best": 1.0,
            "ratio_to_same_work": 1.0,
            "forwards_outside_inference_mode": 0,
        },
        {
            "path": f"plain loop decoding each batch first (PIL + resize, batch {best_batch})",
            "images": num_images,
            "images_per_second": best_decoding,
            "ratio_to_best": best_decoding / best,
            "ratio_to_same_work": 1.0,
            "forwards_outside_inference_mode": 0,
        },
    ]
    for name, path in paths.items():
        speed = path.forwards / min(seconds[name])
        rows.append(
            {
                "path": name,
                "images": path.forwards,
                "images_per_second": speed,
                "ratio_to_best": speed / best,
                "ratio_to_same_work": speed / (best_decoding if path.decodes else best),
                "forwards_outside_inference_mode": outside[name],
            }
        )
    return {
        "variant": options.variant,
        "size": options.size,
        "threads": torch.get_num_threads(),
        "repeats": options.repeats,
        "plain_loop_by_batch": {str(batch): speed for batch, speed in per_batch.items()},
        "best_batch": best_batch,
        "machine": common.machine_description(),
        "rows": rows,
    }, (extractor, images)


BEFORE_AFTER = {
    "before": "the probe's views before: eager NCHW model under no_grad, batch 256, ready tensors, malloc untouched",
    "after": "the probe's views now: `ViewFeatures` fresh look-ahead (augmentation included), library defaults",
}


def forward_probe(kind: str, options) -> dict:
    """Inside a fresh process: one kind of `BEFORE_AFTER`'s forwards over `options.num_images` images, timed once
    after a warm-up: images/s, minor page faults per image, system/user CPU. A fresh process per measurement,
    because the library's malloc settings (`hf_sfm.utils.cpu_memory`) are process-wide: "before" runs with
    `HF_SFM_KEEP_FREED_MEMORY=0`, as the library ran before it kept freed memory."""

    from hf_sfm.evaluation.linear_fit import ViewFeatures
    from hf_sfm.synthesis.augment import Augmentation

    extractor = cpu_backbone(options).feature_extractor
    count = options.num_images
    if kind == "before":
        nchw = copy.deepcopy(extractor)
        nchw.model.to(memory_format=torch.contiguous_format)
        images = torch.rand(count, 3, options.size, options.size, generator=torch.Generator().manual_seed(0))

        def run():
            with torch.no_grad():
                for start in range(0, count, 256):
                    nchw.pool((images[start : start + 256] - nchw.mean) / nchw.std)

    else:
        probe_images = torch.rand(PROBE_IMAGES, 3, options.size, options.size, generator=torch.Generator())
        augmentation = Augmentation(options.size, flip=True, crop=True, noise=False)
        epochs, every = count // PROBE_IMAGES, torch.arange(PROBE_IMAGES)

        def run():
            generator = torch.Generator().manual_seed(0)
            views = ViewFeatures(probe_images, [extractor], augmentation, generator, epochs=epochs)
            for epoch in range(epochs):
                views(every, epoch)

    run()  # warm-up
    return common.timed_forward(run, count)


def before_and_after(options) -> dict:
    """`BEFORE_AFTER` measured alternately in fresh processes, `options.repeats` rounds, best round of each."""
    import json
    import subprocess

    measured: dict[str, list[dict]] = {kind: [] for kind in BEFORE_AFTER}
    for round_ in range(options.repeats):
        for kind in BEFORE_AFTER:
            print(f"before/after round {round_ + 1}: {kind}", flush=True)
            command = [sys.executable, __file__, "--forward-probe", kind, "--variant", options.variant]
            command += ["--size", str(options.size), "--num-images", str(options.num_images)]
            command += ["--threads", str(options.threads)]
            env = dict(os.environ)
            if kind == "before":
                env["HF_SFM_KEEP_FREED_MEMORY"] = "0"
            else:
                env.pop("HF_SFM_KEEP_FREED_MEMORY", None)
            completed = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
            measured[kind].append(json.loads(completed.stdout.strip().splitlines()[-1]))
    best = {kind: max(rows, key=lambda row: row["images_per_second"]) for kind, rows in measured.items()}
    best["after"]["ratio_to_before"] = best["after"]["images_per_second"] / best["before"]["images_per_second"]
    return best


def render_before_after(rows: dict) -> list[str]:
    """Two measurements, before and after: a sentence on the page, not a two-row table."""
    described = "; ".join(
        f"{BEFORE_AFTER[kind]}: {row['images_per_second']:.0f} images/s, {row['minor_faults_per_image']:.0f} minor "
        f"faults per image, sys/user CPU {row['system_per_user_cpu']:.2f}"
        for kind, row in rows.items()
    )
    ratio = rows["after"]["ratio_to_before"]
    return [
        "",
        f"The probe's views before and after: **{ratio:.2f}x** the images/s (fresh process each, best round; "
        f"{described}).",
    ]


def levers(extractor, images: torch.Tensor, repeats: int) -> list[dict]:
    """The issue's forward table re-measured beside the other CPU levers, side by side on the same images: eager
    NCHW weights and input under `no_grad` (before), channels-last under `inference_mode` at several batch sizes,
    `frozen_features` (after), and what else might help: one thread, oneDNN off, `torch.jit.trace` + `freeze`, bf16
    autocast. Each row: images/s, minor page faults per image, system/user CPU, and its largest feature difference
    from `frozen_features` relative to the largest feature (a lever is only worth keeping at float rounding)."""
    from hf_sfm.backbone.features import frozen_features

    nchw = copy.deepcopy(extractor)
    nchw.model.to(memory_format=torch.contiguous_format)

    def loop(forward, batch: int, mode=torch.inference_mode):
        with mode():
            return torch.cat([forward(images[i : i + batch]).float() for i in range(0, len(images), batch)])

    def eager(batch: int):
        return lambda: loop(lambda chunk: nchw.pool((chunk - nchw.mean) / nchw.std), batch, torch.no_grad)

    def with_flags(run, threads=None, mkldnn=True, bf16=False):
        def flagged():
            before = torch.get_num_threads()
            torch.set_num_threads(threads or before)
            try:
                with torch.backends.mkldnn.flags(enabled=mkldnn), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                    return run()
            finally:
                torch.set_num_threads(before)

        return flagged

    with torch.no_grad():
        frozen = torch.jit.freeze(torch.jit.trace(extractor, images[:32], check_trace=False).eval())
    after = lambda: frozen_features(extractor, images)  # noqa: E731
    candidates = {f"eager NCHW, no_grad, batch {batch}": eager(batch) for batch in (10, 50, 256)}
    for batch in (10, 32, 64, 150):
        candidates[f"channels-last, inference_mode, batch {batch}"] = lambda batch=batch: loop(extractor, batch)
    candidates["frozen_features (the default)"] = after
    candidates["frozen_features, 1 thread"] = with_flags(after, threads=1)
    candidates["frozen_features, oneDNN off"] = with_flags(after, mkldnn=False)
    candidates["torch.jit.trace + freeze, batch 32"] = lambda: loop(frozen, 32)
    candidates["frozen_features under bf16 autocast"] = with_flags(after, bf16=True)
    reference = after()
    scale = float(reference.abs().max())
    difference = {name: float((run() - reference).abs().max()) / scale for name, run in candidates.items()}
    measured: dict[str, list[dict[str, float]]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, run in candidates.items():
            measured[name].append(common.timed_forward(run, len(images)))
    rows = []
    for name, results in measured.items():
        best = max(results, key=lambda result: result["images_per_second"])
        rows.append({"forward": name, **best, "max_relative_difference": difference[name]})
    default = next(row for row in rows if row["forward"] == "frozen_features (the default)")
    for row in rows:
        row["ratio_to_default"] = row["images_per_second"] / default["images_per_second"]
    return rows


def render_levers(rows: list[dict]) -> list[str]:
    table = [
        [
            row["forward"],
            f"{row['images_per_second']:.0f}",
            f"{row['ratio_to_default']:.2f}",
            f"{row['minor_faults_per_image']:.0f}",
            f"{row['system_per_user_cpu']:.2f}",
            f"{row['max_relative_difference']:.0e}",
        ]
        for row in rows
    ]
    headers = ["forward (same images)", "images/s", "÷ default", "minor faults / image", "sys/user CPU", "max diff"]
    intro = (
        "The forward itself, before and after, beside the other CPU levers (`--levers`; ÷ default: ratio of images/s):"
    )
    return ["", intro, "", common.markdown_table(headers, table)]


def render(record: dict) -> str:
    same_work = all("ratio_to_same_work" in row for row in record["rows"])  # older records: the first ratio only
    rows = [
        [
            row["path"],
            f"{row['images_per_second']:.0f}",
            f"{row['ratio_to_best']:.2f}" + ("" if same_work or row["ratio_to_best"] >= TARGET else " (below 0.90)"),
            *(
                [f"{row['ratio_to_same_work']:.2f}" + ("" if row["ratio_to_same_work"] >= TARGET else " (below 0.90)")]
                if same_work
                else []
            ),
            "yes"
            if row["forwards_outside_inference_mode"] == 0
            else f"**no** ({row['forwards_outside_inference_mode']})",
        ]
        for row in record["rows"]
    ]
    by_batch = sorted(record["plain_loop_by_batch"].items(), key=lambda item: int(item[0]))  # JSON keys are text
    batches = ", ".join(f"{batch}: {speed:.0f}" for batch, speed in by_batch)
    return "\n".join(
        [
            "## Every frozen forward path against the best plain loop",
            "",
            f"`benchmarks/frozen_paths.py`: EfficientNet-{record['variant'].capitalize()} at {record['size']} px, "
            f"{record['threads']} threads, one process, best of {record['repeats']} interleaved rounds; decoding and "
            f"augmentation count in a path's time. Plain loop images/s by batch size: {batches}. Machine: "
            f"{record['machine']}.",
            "",
            *(
                [
                    "A path that decodes is also compared with the plain loop that decodes the same images first "
                    "(the best a loop doing the same work measured here): the goal column.",
                    "",
                ]
                if same_work
                else []
            ),
            common.markdown_table(
                ["path", "images/s", "ratio to the plain loop"]
                + (["ratio to the plain loop doing the same work"] if same_work else [])
                + ["all forwards in inference mode"],
                rows,
            ),
            *(render_before_after(record["before_after"]) if record.get("before_after") else []),
        ]
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_harness_arguments(parser, NAME, seeds=False)
    parser.add_argument("--variant", default="lite0", choices=["lite0", "lite1", "lite2"])
    parser.add_argument("--size", type=int, default=64, help="Input resolution (the crop) in pixels.")
    parser.add_argument("--num-images", type=int, default=2048, help="Images per path and round.")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[10, 32, 64, 128, 256])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--levers", action="store_true", help="Also time the forward under the other CPU levers.")
    parser.add_argument("--forward-probe", choices=list(BEFORE_AFTER), help=argparse.SUPPRESS)  # a child process
    options = parser.parse_args(argv)
    if options.forward_probe:
        import json

        common.set_threads(options.threads)
        print(json.dumps(forward_probe(options.forward_probe, options)))
        return {}
    if options.render and common.render_only(argv):
        common.render_results()
        return {}
    if options.quick:
        options.num_images, options.repeats, options.batch_sizes = min(options.num_images, 64), 1, [10, 32]
    common.set_threads(options.threads)
    record, (extractor, images) = measure(options)
    record["before_after"] = before_and_after(options)
    if options.levers:
        print("levers: the forward before and after, and other CPU settings", flush=True)
        record["levers"] = levers(extractor, images, options.repeats)
    print(render(record))
    if record.get("levers"):  # an exploratory study: printed and in the JSON, not on RESULTS.md (see NOTES.md)
        print("\n".join(render_levers(record["levers"])))
    path = common.output_path(options, NAME)
    if path is not None:
        data = {"name": "mnist", "train": record["rows"][0]["images"]}
        settings = {key: record[key] for key in ("variant", "size", "threads", "repeats", "best_batch")}
        common.save_json(record, path, common.provenance(probe=settings, data=data, argv=argv))
        print(f"wrote {path}")
    if options.render:
        common.render_results()
    return record


if __name__ == "__main__":
    main()
