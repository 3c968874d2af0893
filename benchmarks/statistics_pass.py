"""Throughput of the statistics pass: hf_sfm's `datasets.map` against a plain PyTorch `DataLoader` loop.

The statistics pass (docs/DESIGN.md §2.1) is the only pass over the whole real dataset, so its images/s decide how
long a run on ImageNet-1k waits before distilling. This script runs, side by side in one process on the embedded default
(MNIST from `hf_sfm.assets.load_mnist()["train"]`, EfficientNet-Lite0, crop 64, batch 64):

- hf_sfm's pass, `compute_class_statistics` with the `Distiller`'s embed, for several `num_workers` (0 is the
  one-process map and the CPU default; >0 decodes the next batches in `DataLoader` workers), through
  `Distiller.compute_statistics` (what a user runs), and with the PIL-image embed of earlier versions;
- a plain loop: `DataLoader(num_workers=2)` decoding + preprocessing rows, the same backbone, batch and sums;
  `default_collate` hands it contiguous NCHW batches, while hf_sfm's batches are the stacked HWC arrays seen as
  NCHW (channels-last memory), which this CPU convolves ~1.5x faster, so the plain loop is also timed on batches
  converted to channels-last: that row isolates what the pipelines themselves cost;

checks that every pipeline's per-class sums and counts agree with the plain loop's, then does the same on two
processes (`accelerate launch --multi_gpu --num_processes 2 ...`, gloo on CPU: the `Distiller` shards the dataset
with `split_dataset_by_node` and all-reduces; the plain loop does the same by hand), and on CUDA when there is
one (images/s and `torch.cuda.max_memory_allocated`). Each timed run is repeated (`--repeats`, interleaved) and
the best and median images/s are reported: other jobs share this machine's cores.

    python benchmarks/statistics_pass.py            # full: 2000 images, 3 repeats, 1 and 2 processes
    python benchmarks/statistics_pass.py --quick    # smoke run (< 60 s on CPU); writes nothing unless --output

The full run writes `results/statistics_pass.json` and its section of `RESULTS.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics as stats
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # time this checkout's hf_sfm (here and launched)
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import datasets
import torch

BENCHMARKS_DIR = Path(__file__).resolve().parent
REPO = BENCHMARKS_DIR.parent
NAME = "statistics_pass"
LAUNCH = [
    sys.executable, "-m", "accelerate.commands.launch",
    "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
]  # fmt: skip


def machine_description() -> str:
    return f"{common.machine_description()}, datasets {datasets.__version__}"


def load_default(num_images: int, crop_size: int):
    """`(model, image_processor, preprocessing, feature_extractor, train)`: Lite0 and the first MNIST train images."""
    from transformers import AutoImageProcessor, AutoModel

    from hf_sfm.assets import efficientnet_lite_path, load_mnist
    from hf_sfm.backbone.features import FeatureExtractor
    from hf_sfm.data.preprocessing import ImagePreprocessing

    path = efficientnet_lite_path("lite0")
    model, processor = AutoModel.from_pretrained(path), AutoImageProcessor.from_pretrained(path)
    preprocessing = ImagePreprocessing.from_image_processor(processor, crop_size)
    feature_extractor = FeatureExtractor(model, preprocessing).eval()
    train = load_mnist()["train"]
    return model, processor, preprocessing, feature_extractor, train.select(range(min(num_images, len(train))))


# ---------------------------------------------------------------------------------------------- the two pipelines


class PlainImages(torch.utils.data.Dataset):
    """Row `i` → `((3, S, S) uint8, label)`: `datasets` decodes, `ImagePreprocessing` resizes and crops."""

    def __init__(self, dataset, preprocessing):
        self.dataset, self.preprocessing = dataset, preprocessing

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        row = self.dataset[index]
        return torch.from_numpy(self.preprocessing.array(row["image"]).copy()).permute(2, 0, 1), row["label"]


def plain_loop(
    feature_extractor, preprocessing, dataset, num_classes, batch_size, num_workers, device, autocast,
    channels_last=False,
):  # fmt: skip
    """The usual PyTorch loop: `(C, D)` float64 sums and `(C,)` counts, on `device`. `default_collate` stacks the
    images into a contiguous NCHW batch; `channels_last` converts it (as hf_sfm's batches are laid out)."""
    loader = torch.utils.data.DataLoader(
        PlainImages(dataset, preprocessing),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    sums, counts = None, torch.zeros(num_classes, dtype=torch.long, device=device)
    with torch.no_grad():
        for pixels, labels in loader:
            pixels, labels = pixels.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if channels_last:
                pixels = pixels.contiguous(memory_format=torch.channels_last)
            with autocast():
                features = feature_extractor(pixels.float() / 255.0).double()
            if sums is None:
                sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float64, device=device)
            sums.index_add_(0, labels, features)
            counts.index_add_(0, labels, torch.ones_like(labels))
    return sums, counts


def hf_sfm_pass(
    feature_extractor, preprocessing, dataset, class_names, batch_size, num_workers, device, autocast, pil=False
):
    """hf_sfm's pass with the `Distiller`'s embed (uint8 batches moved with `non_blocking`), or with `pil` the
    PIL-image embed of earlier versions. A fresh fingerprint each call: every run computes."""
    from hf_sfm.data.statistics import compute_class_statistics

    @torch.no_grad()
    def embed(pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.to(device, non_blocking=True)
        with autocast():
            return feature_extractor(preprocessing.to_unit_range(pixels))

    @torch.no_grad()
    def embed_pil(images: list) -> torch.Tensor:
        with autocast():
            return feature_extractor(preprocessing(images).to(device))

    return compute_class_statistics(
        dataset,
        embed_pil if pil else embed,
        image_column="image",
        label_column="label",
        class_names=class_names,
        batch_size=batch_size,
        new_fingerprint=uuid.uuid4().hex,
        preprocessing=None if pil else preprocessing,
        num_workers=0 if pil else num_workers,
        device=device,
    )


def distiller_for(model, processor, train, batch_size, output_dir, accelerator=None):
    from hf_sfm import DistillationConfig, Distiller

    args = DistillationConfig(
        output_dir=str(output_dir),
        overwrite_output_dir=True,
        crop_size=64,
        image_size=64,
        statistics_batch_size=batch_size,
        recompute_statistics=True,
        save_grid=False,
        logging_steps=0,
    )
    return Distiller(model=model, args=args, train_dataset=train, image_processor=processor, accelerator=accelerator)


def _null_autocast():
    import contextlib

    return contextlib.nullcontext()


def _agreement(sums: torch.Tensor, counts: torch.Tensor, reference: tuple[torch.Tensor, torch.Tensor]) -> dict:
    reference_sums, reference_counts = (tensor.cpu() for tensor in reference)
    difference = (sums.cpu().double() - reference_sums).abs().max().item()
    relative = difference / max(reference_sums.abs().max().item(), 1e-30)
    return {
        "max_abs_difference": difference,
        "max_relative_difference": relative,
        "counts_equal": bool(torch.equal(counts.cpu(), reference_counts)),
        "agree": bool(torch.equal(counts.cpu(), reference_counts)) and relative < 1e-5,
    }


def _summary(name: str, seconds: list[float], num_images: int, **extra) -> dict:
    rates = [num_images / s for s in seconds]
    return {
        "pipeline": name,
        "images": num_images,
        "seconds": seconds,
        "images_per_second_best": max(rates),
        "images_per_second_median": stats.median(rates),
        **extra,
    }


# ---------------------------------------------------------------------------------------------- one process


def one_process(options, device: torch.device, work_dir: str) -> list[dict]:
    """Every pipeline on `device`, `repeats` times interleaved; sums checked against the plain loop's."""
    model, processor, preprocessing, feature_extractor, train = load_default(options.num_images, options.crop_size)
    feature_extractor.to(device)
    class_names = train.features["label"].names
    autocast = _null_autocast
    if options.bf16:
        autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16)  # noqa: E731
    with torch.no_grad():  # warm-up: first-call allocations are nobody's throughput
        feature_extractor(torch.rand(options.batch_size, 3, options.crop_size, options.crop_size, device=device))

    cpu = device.type == "cpu"
    worker_counts = options.workers if cpu else [None, *options.workers]  # None: the device's default
    pipelines: dict[str, Any] = {}
    for workers in worker_counts:
        label = "default" if workers is None else workers
        pipelines[f"hf_sfm, num_workers={label}"] = lambda w=workers: hf_sfm_pass(
            feature_extractor, preprocessing, train, class_names, options.batch_size, w, device, autocast
        )
    if cpu and not options.quick:
        pipelines["hf_sfm, PIL embed of earlier versions (num_workers=0)"] = lambda: hf_sfm_pass(
            feature_extractor, preprocessing, train, class_names, options.batch_size, 0, device, autocast, pil=True
        )
    if cpu and not options.bf16:  # the Distiller wraps the same model, on its accelerator's (CPU) device
        distiller = distiller_for(model, processor, train, options.batch_size, work_dir)
        pipelines["hf_sfm, Distiller.compute_statistics (default)"] = distiller.compute_statistics
    plain_name = f"plain DataLoader loop, num_workers={options.plain_workers}"
    for channels_last in (False, True) if not options.quick else (False,):
        name = plain_name + (", channels-last batches" if channels_last else "")
        pipelines[name] = lambda c=channels_last: plain_loop(
            feature_extractor, preprocessing, train, len(class_names), options.batch_size, options.plain_workers,
            device, autocast, channels_last=c,
        )  # fmt: skip

    seconds: dict[str, list[float]] = {name: [] for name in pipelines}
    results: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    peaks: dict[str, int] = {}
    for _ in range(options.repeats):
        for name, run in pipelines.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            output = run()
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds[name].append(time.perf_counter() - start)
            if device.type == "cuda":
                peaks[name] = max(peaks.get(name, 0), torch.cuda.max_memory_allocated())
            results[name] = output if isinstance(output, tuple) else (output.feature_sums, output.counts)
    rows = []
    for name in pipelines:
        extra = {"processes": 1, "device": str(device), "bf16": options.bf16, "torch_threads": torch.get_num_threads()}
        if name in peaks:
            extra["cuda_max_memory_allocated_mib"] = peaks[name] / 2**20
        extra["sums_vs_plain_loop"] = _agreement(*results[name], results[plain_name])
        rows.append(_summary(name, seconds[name], len(train), **extra))
    return rows


# ---------------------------------------------------------------------------------------------- two processes


def distributed_worker(spec: dict) -> None:
    """Run under `accelerate launch` (2 processes): the Distiller's pass and a sharded plain loop, timed alike."""
    from accelerate import Accelerator
    from datasets.distributed import split_dataset_by_node

    from hf_sfm.utils.distributed import cpu_only

    torch.set_num_threads(1)  # one core each
    datasets.disable_progress_bars()
    accelerator = Accelerator(cpu=cpu_only())
    model, processor, preprocessing, feature_extractor, train = load_default(spec["num_images"], spec["crop_size"])
    device = accelerator.device
    distiller = distiller_for(model, processor, train, spec["batch_size"], spec["output_dir"], accelerator)
    feature_extractor = distiller.feature_extractor
    class_names = train.features["label"].names
    rank, world = accelerator.process_index, accelerator.num_processes

    def plain():
        shard = split_dataset_by_node(train, rank=rank, world_size=world)
        sums, counts = plain_loop(
            feature_extractor, preprocessing, shard, len(class_names), spec["batch_size"], spec["plain_workers"],
            device, _null_autocast,
        )  # fmt: skip
        return accelerator.reduce(sums, "sum"), accelerator.reduce(counts, "sum")

    def through_distiller():
        statistics = distiller.compute_statistics()
        return statistics.feature_sums, statistics.counts

    pipelines = {
        "hf_sfm, Distiller.compute_statistics (default)": through_distiller,
        f"plain DataLoader loop, num_workers={spec['plain_workers']} per process": plain,
    }
    with torch.no_grad():
        feature_extractor(torch.rand(2, 3, spec["crop_size"], spec["crop_size"], device=device))
    seconds: dict[str, list[float]] = {name: [] for name in pipelines}
    results = {}
    for _ in range(spec["repeats"]):
        for name, run in pipelines.items():
            accelerator.wait_for_everyone()
            start = time.perf_counter()
            results[name] = run()
            accelerator.wait_for_everyone()
            seconds[name].append(time.perf_counter() - start)
    if accelerator.is_main_process:
        reference = results[list(pipelines)[-1]]
        rows = [
            _summary(
                name,
                seconds[name],
                len(train),
                processes=world,
                device=str(device),
                bf16=False,
                torch_threads=1,
                sums_vs_plain_loop=_agreement(*results[name], reference),
            )
            for name in pipelines
        ]
        common.write_atomic(Path(spec["result_path"]), json.dumps(rows))
    accelerator.wait_for_everyone()


def two_processes(options) -> list[dict]:
    with tempfile.TemporaryDirectory() as work:
        spec = {
            "num_images": options.num_images,
            "crop_size": options.crop_size,
            "batch_size": options.batch_size,
            "plain_workers": options.plain_workers,
            "repeats": options.repeats,
            "output_dir": str(Path(work) / "out"),
            "result_path": str(Path(work) / "result.json"),
        }
        env = dict(
            os.environ,
            OMP_NUM_THREADS="1",
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        )
        command = [*LAUNCH, str(Path(__file__).resolve()), "--distributed-worker", json.dumps(spec)]
        completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
        if completed.returncode != 0:
            raise RuntimeError(f"The 2-process run failed:\n{completed.stderr[-4000:]}")
        return json.loads(Path(spec["result_path"]).read_text())


# ---------------------------------------------------------------------------------------------- report


def render(record: dict) -> str:
    headers = ["processes", "device", "pipeline", "images/s (best)", "images/s (median)", "sums vs plain loop"]
    cuda = any("cuda_max_memory_allocated_mib" in row for row in record["rows"])
    if cuda:
        headers.append("CUDA max allocated (MiB)")
    rows = []
    for row in record["rows"]:
        agreement = row["sums_vs_plain_loop"]
        verdict = (
            "equal" if agreement["max_abs_difference"] == 0 else f"rel. diff {agreement['max_relative_difference']:.1e}"
        )
        verdict = (
            verdict if agreement["agree"] else f"**DIFFER** ({verdict}, counts equal: {agreement['counts_equal']})"
        )
        cells = [
            row["processes"],
            row["device"] + (" bf16" if row.get("bf16") else ""),
            row["pipeline"],
            f"{row['images_per_second_best']:.0f}",
            f"{row['images_per_second_median']:.0f}",
            verdict,
        ]
        if cuda:
            memory = row.get("cuda_max_memory_allocated_mib")
            cells.append(f"{memory:.0f}" if memory is not None else "")
        rows.append(cells)
    lines = [
        "## Statistics pass throughput",
        "",
        f"`benchmarks/statistics_pass.py`: {record['num_images']} MNIST train images, EfficientNet-Lite0, crop "
        f"{record['crop_size']}, batch {record['batch_size']}, best and median of {record['repeats']} interleaved "
        f"runs. Machine: {record['machine']}. Load average (1 min) before / after: {record['load_before']} / "
        f"{record['load_after']}.",
        "",
        common.markdown_table(headers, rows),
    ]
    return "\n".join(lines)


def _load_average() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_harness_arguments(parser, NAME, seeds=False)  # --quick: 128 images, batch 32, 1 process, 1 repeat
    parser.add_argument("--num-images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--crop-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", default="0,1,2", help="hf_sfm num_workers values to time, comma-separated.")
    parser.add_argument("--plain-workers", type=int, default=2, help="Decoding workers of the plain loop.")
    parser.add_argument("--processes", default="1,2", help="Process counts to run on CPU, comma-separated.")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast in both pipelines (CUDA runs).")
    parser.add_argument("--distributed-worker", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.render and common.render_only(argv):
        common.render_results()
        return
    if options.distributed_worker:
        distributed_worker(json.loads(options.distributed_worker))
        return
    if options.quick:
        options.num_images, options.batch_size, options.repeats = min(options.num_images, 128), 32, 1
        options.workers, options.processes = "0,2", "1"
    options.workers = [int(w) for w in options.workers.split(",")]
    processes = [int(p) for p in options.processes.split(",")]
    datasets.disable_progress_bars()

    load_before = _load_average()
    with tempfile.TemporaryDirectory() as work_dir:
        rows = one_process(options, torch.device("cpu"), work_dir) if 1 in processes else []
        if 2 in processes and not (torch.cuda.is_available() and torch.cuda.device_count() < 2):
            rows += two_processes(options)
        if torch.cuda.is_available():
            rows += one_process(options, torch.device("cuda"), work_dir)
    record = {
        "num_images": rows[0]["images"] if rows else options.num_images,
        "crop_size": options.crop_size,
        "batch_size": options.batch_size,
        "repeats": options.repeats,
        "machine": machine_description(),
        "load_before": load_before,
        "load_after": _load_average(),
        "rows": rows,
    }
    print(render(record))
    path = common.output_path(options, NAME)
    if path is not None:
        data = {"name": "mnist", "train": record["num_images"]}
        probe = {"batch_size": options.batch_size, "crop_size": options.crop_size}
        common.save_json(record, path, common.provenance(probe=probe, data=data))
    if options.render:
        common.render_results()
    if not all(row["sums_vs_plain_loop"]["agree"] for row in rows):
        raise SystemExit("The pipelines' class sums disagree (see the table).")


if __name__ == "__main__":
    main()
