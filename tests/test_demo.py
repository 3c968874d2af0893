"""The embedded default runs end to end on the real offline assets (tiny budget: this checks wiring, not accuracy)."""

import json

import datasets
import numpy as np
import pytest
import torch

from hf_sfm.demo import format_results, parse_arguments, run_demo
from hf_sfm.evaluation.probe import FAST_PROBE_VIEWS


def _few_mnist(load_mnist):
    """The real embedded MNIST, stratified down to 30 train and 10 test images per class: the wiring is the same for
    300 images as for 5000, and the statistics pass and three probe feature passes are per image."""

    def few(*args, **kwargs):
        splits = load_mnist(*args, **kwargs)
        return datasets.DatasetDict(
            {
                name: split.train_test_split(train_size=size, stratify_by_column="label", seed=0)["train"]
                for (name, split), size in zip(splits.items(), (300, 100), strict=True)
            }
        )

    return few


@pytest.mark.slow
def test_demo_runs_end_to_end_and_saves_its_outputs(tmp_path, monkeypatch):
    import hf_sfm.assets as assets

    monkeypatch.setattr(assets, "load_mnist", _few_mnist(assets.load_mnist))
    args, demo = parse_arguments(
        [
            "--output_dir",
            str(tmp_path / "demo"),
            "--num_steps",
            "2",
            "--crop_size",
            "32",
            "--image_size",
            "32",
            "--eval_runs",
            "1",
            "--probe_epochs",
            "5",
            "--logging_steps",
            "0",
        ]
    )
    results = run_demo(args, demo)
    assert results["train"]["train_runtime"] > 0 and results["metrics"]["eval_probe_epochs"] == 5
    for key in ("eval_accuracy", "eval_random_real_accuracy", "eval_centroids_accuracy"):
        assert 0.0 <= results["metrics"][key] <= 1.0
        assert 0.0 <= results["cross_metrics"][key.replace("eval", "cross", 1)] <= 1.0
    output_dir = tmp_path / "demo"
    assert json.loads((output_dir / "results.json").read_text())["ipc"] == 1
    assert json.loads((output_dir / "eval_results.json").read_text()) == results["metrics"]
    assert (output_dir / "statistics.safetensors").exists()
    assert (output_dir / "synthetic_grid.png").exists()
    assert (output_dir / "distilled" / "data" / "train-00000-of-00001.parquet").exists()
    assert "SFM distilled" in format_results(results)


def test_demo_defaults_parse_and_cli_overrides_win():
    args, demo = parse_arguments(["--ipc", "2"])
    assert args.ipc == 2 and args.crop_size == 64 and args.init == "centroid" and demo.backbone == "lite0"


def test_demo_probes_run_the_fast_protocol_and_the_papers_one_flag_away():
    args, demo = parse_arguments([])
    assert args.eval_runs == 5 and args.probe_epochs == 1000 and args.probe_views == FAST_PROBE_VIEWS
    assert demo.eval_backbone == "lite2"
    paper, _ = parse_arguments(["--probe_protocol", "paper"])
    assert paper.probe_views is None


def test_the_demo_table_names_its_protocol_and_has_a_column_per_backbone():
    metrics = {"eval_probe_epochs": 1000, "eval_probe_views": 64, "eval_probe_augment": True, "eval_runs": 5}
    cross = {}
    for prefix, table in (("eval", metrics), ("cross", cross)):
        for stem in ("", "_random_real", "_centroids"):
            table[f"{prefix}{stem}_accuracy"], table[f"{prefix}{stem}_accuracy_std"] = 0.5, 0.01
    results = {
        "metrics": metrics,
        "cross_metrics": cross,
        "backbone": "efficientnet-lite0",
        "eval_backbone": "efficientnet-lite2",
        "dataset": "mnist",
        "ipc": 1,
        "train": {"train_runtime": 1.0},
        "total_seconds": 2.0,
        "config": {"output_dir": "out"},
    }
    text = format_results(results)
    assert "the fast probe protocol" in text and "efficientnet-lite2 (not distilled on)" in text
    assert text.count("0.500 ± 0.010") == 6
    metrics["eval_probe_views"] = 0
    assert "the papers' probe protocol" in format_results(results)


def test_the_grid_puts_classes_across_with_start_distilled_and_difference():
    from hf_sfm.publishing.visualization import comparison_grid

    start = torch.rand(10, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    distilled = start.clone()
    distilled[3, 0] += 0.2  # one class changed, in its red channel
    grid = comparison_grid(start, distilled.clamp(0, 1), torch.arange(10), [str(c) for c in range(10)], cell=16)
    assert grid.width > 2 * grid.height  # classes across, not one tall column
    pixels = np.asarray(grid)
    # the difference row is grey where nothing changed and not grey for class 3
    margin, gap, label, cell = 62, 2, 14, 16
    top = gap + label + 2 * (cell + gap)
    unchanged = pixels[top + 4, margin + gap + 0 * (cell + gap) + 4]
    changed = pixels[top + 4, margin + gap + 3 * (cell + gap) + 4]
    assert tuple(unchanged) == (128, 128, 128) and changed[0] > 128 and changed[1] == 128
