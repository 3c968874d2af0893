"""Issue 23, second part: the view bank embedded in batches, every frozen path through `frozen_features` (checked by
the benchmark's own path list), and the speed benchmarks' JSONs with their provenance and rendered sections."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import build_backbone, color_dataset, tiny_image_processor

from hf_sfm.backbone.features import FeatureExtractor, frozen_chunk_size
from hf_sfm.backbone.frozen import FrozenBackbone
from hf_sfm.data.preprocessing import ImagePreprocessing
from hf_sfm.evaluation.linear_fit import ViewFeatures
from hf_sfm.evaluation.probe import ProbeConfig, ProbeEvaluator, train_linear_probes
from hf_sfm.inheritance import ProjectorConfig, fit_projector
from hf_sfm.synthesis.augment import Augmentation, resize

ROOT = Path(__file__).resolve().parent.parent
SIZE = 32


@pytest.fixture
def benchmarks(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import eval_speed
    import frozen_paths
    import render_results

    return eval_speed, frozen_paths, render_results


def _extractor(family="efficientnet", size=SIZE):
    return FeatureExtractor(build_backbone(family), ImagePreprocessing.from_image_processor(tiny_image_processor(size)))


def _images(n, seed=0, size=36):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _bank_one_view_at_a_time(images, extractors, augmentation, generator, views, batch_size):
    """The bank as it was built before: one view of every image at a time, each chunk through each extractor."""
    bank = [[] for _ in extractors]
    with torch.no_grad():
        for _ in range(views):
            chunks = []
            for i in range(0, len(images), batch_size):
                view = augmentation(images[i : i + batch_size], generator)
                chunks.append([extractor(resize(view, extractor.input_size)) for extractor in extractors])
            for k in range(len(extractors)):
                bank[k].append(torch.cat([chunk[k] for chunk in chunks]))
    return [torch.stack(per_extractor) for per_extractor in bank]


# ------------------------------------------------------------------------------------------ the view bank


@pytest.mark.parametrize("batch_size, views", [(4, 5), (8, 7), (256, 14)])
def test_the_view_bank_embedded_in_batches_equals_one_view_at_a_time(batch_size, views):
    """Same draws (views are still augmented one view of `batch_size` images at a time), other batching of the
    forward: equal features within float tolerance."""
    extractor = _extractor()
    images = _images(5, seed=1)
    augmentation = Augmentation(SIZE, flip=True, crop=True, noise=False)
    batch_sizes = []
    extractor.register_forward_pre_hook(lambda module, args: batch_sizes.append(len(args[0])))
    bank = ViewFeatures(
        images, [extractor], augmentation, torch.Generator().manual_seed(3), views=views, batch_size=batch_size
    )
    embedded_sizes = list(batch_sizes)
    (reference,) = _bank_one_view_at_a_time(
        images, [extractor], augmentation, torch.Generator().manual_seed(3), views, batch_size
    )
    assert bank.bank[0].shape == reference.shape == (views, 5, reference.shape[-1])
    torch.testing.assert_close(bank.bank[0], reference, rtol=1e-4, atol=1e-5)
    total = views * 5
    if batch_size == 256:  # 70 views in one frozen_features call: the backbone sees full chunks, not 5 images
        chunk = frozen_chunk_size("cpu")
        assert embedded_sizes == [min(chunk, total - start) for start in range(0, total, chunk)]
    else:  # exactly `batch_size` views per call, not `batch_size` plus a few (a chunk of a few after it)
        assert embedded_sizes == [min(batch_size, total - start) for start in range(0, total, batch_size)]


def test_the_paired_bank_of_two_backbones_equals_one_view_at_a_time():
    """The projector's bank: the same views through two backbones of different input sizes, batched as one."""
    first, second = _extractor("efficientnet"), _extractor("resnet", size=24)
    images = _images(6, seed=2)
    augmentation = Augmentation(SIZE, flip=True, crop=True, noise=False)
    views = ViewFeatures(images, [first, second], augmentation, torch.Generator().manual_seed(5), views=9)
    reference = _bank_one_view_at_a_time(
        images, [first, second], augmentation, torch.Generator().manual_seed(5), 9, 256
    )
    for built, expected in zip(views.bank, reference, strict=True):
        torch.testing.assert_close(built, expected, rtol=1e-4, atol=1e-5)
    drawn = views(torch.tensor([0, 5, 2]))  # a draw from the bank: the same view index for both backbones
    assert drawn[0].shape == (3, reference[0].shape[-1]) and drawn[1].shape == (3, reference[1].shape[-1])


def test_fresh_paired_views_embed_only_the_epochs_the_projector_runs():
    """Without a bank, the look-ahead stops at the fit's last epoch instead of embedding 4096 views ahead."""
    first, second = _extractor("efficientnet"), _extractor("resnet")
    seen = []
    for extractor in (first, second):
        extractor.register_forward_pre_hook(lambda module, args: seen.append(len(args[0])))
    images = _images(6, size=SIZE)
    augmentation = Augmentation(SIZE, flip=True, crop=True, noise=False)
    seen.clear()
    fit_projector(first, second, images, augmentation, ProjectorConfig(epochs=3, views=None), None)
    assert sum(seen) == 2 * 3 * 6 + 2  # 3 epochs of 6 views through both backbones, and one feature_dim each


# ------------------------------------------------------------------------------------------ the one frozen forward


def _watched(counter_class, *extractors):
    counter = counter_class()
    for extractor in extractors:
        counter.watch(extractor)
    return counter


def test_every_path_of_the_benchmark_runs_its_forwards_through_frozen_features(benchmarks):
    """The benchmark's own path list, on a tiny backbone: every backbone forward of every path ran under inference
    mode (what `frozen_features` sets; a path around it would run under `no_grad`)."""
    _, frozen_paths, _ = benchmarks
    backbone = FrozenBackbone.prepare(
        build_backbone("efficientnet"),
        tiny_image_processor(),
        crop_size=SIZE,
        feature_fn=None,
        mixed_precision="no",
        gradient_checkpointing=False,
        device=torch.device("cpu"),
    )
    dataset = color_dataset(per_class=4)
    counter = _watched(frozen_paths.InferenceModeCounter, backbone.feature_extractor)
    paths = frozen_paths.library_paths(backbone, dataset, _images(len(dataset), size=SIZE), len(dataset), counter)
    assert len(paths) >= 8
    for name, (_, run, _) in paths.items():
        counter.forwards = 0
        run()
        assert counter.forwards > 0, name
        assert counter.take() == 0, f"{name}: a forward ran outside frozen_features"


def test_a_forward_around_frozen_features_is_caught(benchmarks):
    """The check above can fail: a plain `no_grad` forward is counted."""
    _, frozen_paths, _ = benchmarks
    extractor = _extractor()
    counter = _watched(frozen_paths.InferenceModeCounter, extractor)
    with torch.no_grad():
        extractor(_images(2, size=SIZE))
    assert counter.take() == 1


@pytest.mark.parametrize(
    "config",
    [
        ProbeConfig(epochs=3, learning_rate=0.05, scale_learning_rate=False),
        ProbeConfig(epochs=3, learning_rate=0.05, scale_learning_rate=False, views=2),
        ProbeConfig(epochs=3, learning_rate=0.05, scale_learning_rate=False, augment=False),
    ],
    ids=["fresh", "bank", "no-augment"],
)
def test_probes_and_the_projector_run_every_forward_through_frozen_features(benchmarks, config):
    _, frozen_paths, _ = benchmarks
    extractor, other = _extractor(), _extractor("resnet")
    counter = _watched(frozen_paths.InferenceModeCounter, extractor, other)
    images, labels = _images(6, size=SIZE), torch.tensor([0, 1, 2, 0, 1, 2])
    train_linear_probes(extractor, [(images, labels)], 3, config, seeds=[0])
    augmentation = Augmentation(SIZE, flip=True, crop=True, noise=False)
    fit_projector(extractor, other, images, augmentation, ProjectorConfig(epochs=2, views=config.views or 2), None)
    evaluator = ProbeEvaluator(None, tiny_image_processor(), color_dataset(per_class=2), feature_extractor=extractor)
    evaluator.test_features()
    assert counter.forwards > 0 and counter.take() == 0


# ------------------------------------------------------------------------------------------ the benchmarks' files


def _git_head() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()


def _fake_protocols(name, train, test, backbone, settings, runs, epochs, seed):
    scores = {training_set: [0.5 + 0.01 * run for run in range(runs)] for training_set in ("distilled", "random_real")}
    scores["centroids"] = [0.4] * runs
    return {protocol: {"seconds": 2.0, "scores": scores, "probe": {"epochs": epochs}} for protocol in ("paper", "fast")}


def test_eval_speed_records_the_commit_and_full_config_and_renders_its_section(benchmarks, tmp_path, monkeypatch):
    """The JSON of a run (the probes replaced by a stand-in: the real ones run in test_fast_eval) holds the commit,
    each dataset's full DistillationConfig, both probe configs, split sizes and every run's score; RESULTS.md's
    section is rendered from it."""
    eval_speed, _, render_results = benchmarks
    monkeypatch.setattr(eval_speed, "compare_protocols", _fake_protocols)
    forward = {"before": {"images_per_second": 250.0, "minor_faults_per_image": 400.0, "system_per_user_cpu": 0.3}}
    monkeypatch.setattr(eval_speed, "measure_forward", lambda *args: forward)
    output = tmp_path / "eval_speed.json"
    eval_speed.main(["--quick", "--runs", "3", "--epochs", "70", "--output", str(output)])
    record = json.loads(output.read_text())
    provenance = record["provenance"]
    assert provenance["commit"] == _git_head() and provenance["dirty"] in (True, False)
    assert set(provenance["configs"]) == {"colours-0", "colours-1"}
    config = provenance["configs"]["colours-0"]
    assert config["num_steps"] == 2 and config["crop_size"] == 32 and "learning_rate" in config and "ipc" in config
    assert provenance["probe"]["paper"]["views"] is None and provenance["probe"]["fast"]["views"] == 64
    assert provenance["probe"]["fast"]["epochs"] == 70
    assert provenance["data"]["colours-0"] == {"name": "colours-0", "train": 12, "validation": 9}
    assert record["datasets"]["colours-1"]["fast"]["scores"]["distilled"] == [0.5, 0.51, 0.52]
    assert (record["runs"], record["epochs"]) == (3, 70)

    results = tmp_path / "results"
    shutil.copytree(render_results.RESULTS_DIR, results)
    shutil.copy(output, results / "eval_speed.json")
    (results / "frozen_paths.json").write_text(json.dumps(_frozen_paths_record(num_paths=10)))
    monkeypatch.setattr(render_results, "RESULTS_DIR", results)
    page = render_results.render()
    assert len(page.splitlines()) <= 250  # test_results_render's limit, with both sections on the page
    assert "### Probe protocols: the papers' fresh views against the fast view bank" in page
    assert "| distilled | 51.0 ± 0.8 | 51.0 ± 0.8 | +0.00 stds |" in page
    # The forward's before/after on the page is frozen_paths' (fresh processes); this run's stays in its JSON.
    assert record["forward"]["before"]["images_per_second"] == 250.0 and "| before | 250 | 400 | 0.30 |" not in page


def _frozen_paths_record(num_paths: int = 3) -> dict:
    rows = [
        {"path": "plain loop", "images": 512, "images_per_second": 600.0, "ratio_to_best": 1.0},
        {"path": "view bank", "images": 640, "images_per_second": 570.0, "ratio_to_best": 0.95},
        {"path": "slow path", "images": 512, "images_per_second": 300.0, "ratio_to_best": 0.5},
    ]
    rows += [dict(rows[1], path=f"path {i}") for i in range(num_paths - 3)]
    for row in rows:
        row["forwards_outside_inference_mode"] = 3 if row["path"] == "slow path" else 0
    lever = {"forward": "bf16", "images_per_second": 300.0, "ratio_to_default": 0.5, "minor_faults_per_image": 2.0}
    lever.update(system_per_user_cpu=0.1, max_relative_difference=0.08)
    record = {"variant": "lite0", "size": 64, "threads": 2, "repeats": 3, "best_batch": 32, "machine": "m"}
    record.update(plain_loop_by_batch={"10": 450.0, "32": 600.0}, rows=rows, levers=[lever] * 13)
    return record


def test_frozen_paths_renders_ratios_and_flags_slow_or_bypassing_paths(benchmarks, tmp_path, monkeypatch):
    _, frozen_paths, render_results = benchmarks
    record = _frozen_paths_record()
    text = frozen_paths.render(record)
    assert "| view bank | 570 | 0.95 | yes |" in text
    assert "| slow path | 300 | 0.50 (below 0.90) | **no** (3) |" in text
    assert "| bf16 | 300 | 0.50 | 2 | 0.10 | 8e-02 |" in "\n".join(frozen_paths.render_levers(record["levers"]))

    results = tmp_path / "results"
    shutil.copytree(render_results.RESULTS_DIR, results)
    (results / "frozen_paths.json").write_text(json.dumps(_frozen_paths_record(num_paths=10)))
    monkeypatch.setattr(render_results, "RESULTS_DIR", results)
    page = render_results.render()
    assert "### Every frozen forward path against the best plain loop" in page
    assert "bf16" not in page  # the levers study is printed and kept in the JSON, not put on the page


def test_the_benchmarks_take_the_harness_flags(benchmarks, capsys):
    eval_speed, frozen_paths, _ = benchmarks
    for script in (eval_speed, frozen_paths):
        with pytest.raises(SystemExit):
            script.main(["--help"])
        usage = capsys.readouterr().out
        for flag in ("--quick", "--output", "--render"):
            assert flag in usage
    with pytest.raises(SystemExit):
        eval_speed.main(["--help"])
    assert "--dataset" in capsys.readouterr().out
