"""The embedded default runs end to end on the real offline assets (tiny budget: this checks wiring, not accuracy)."""

import json

import pytest

from hf_sfm.demo import format_results, parse_arguments, run_demo


@pytest.mark.slow
def test_demo_runs_end_to_end_and_saves_its_outputs(tmp_path):
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
    for key in ("eval_accuracy", "eval_random_real_accuracy", "eval_centroids_accuracy"):
        assert 0.0 <= results["metrics"][key] <= 1.0
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


def test_demo_probes_follow_the_papers_protocol():
    args, _ = parse_arguments([])
    assert args.eval_runs == 5 and args.probe_epochs == 1000 and args.probe_views is None
