"""Fast evaluation (issue 23): one frozen forward for every read-only backbone pass, probes trained together, a fast
probe protocol by default that says so, and the benchmark that compares it with the papers'."""

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_backbone, color_dataset
from transformers import ViTImageProcessor

from hf_sfm import DistillationConfig, Distiller
from hf_sfm.backbone.features import FeatureExtractor, frozen_chunk_size, frozen_features
from hf_sfm.data.preprocessing import ImagePreprocessing
from hf_sfm.evaluation.linear_fit import ViewFeatures, embed_resized
from hf_sfm.evaluation.probe import (
    FAST_PROBE_VIEWS,
    ProbeConfig,
    ProbeEvaluator,
    evaluate_training_sets,
    protocol_description,
    train_linear_probe,
    train_linear_probes,
)
from hf_sfm.synthesis.augment import Augmentation, resize

ROOT = Path(__file__).resolve().parent.parent
SIZE = 32


def _processor():
    return ViTImageProcessor(size={"height": SIZE, "width": SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def _extractor(family="vit"):
    return FeatureExtractor(build_backbone(family), ImagePreprocessing.from_image_processor(_processor()))


def _images(n, seed=0, size=36):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------ the frozen forward


@pytest.mark.parametrize("family", ["vit", "efficientnet", "resnet"])
def test_frozen_features_equal_the_plain_forward(family):
    extractor = _extractor(family)
    images = _images(11, size=SIZE)
    with torch.no_grad():
        reference = extractor(images)
    for chunk_size in (None, 3, 64):
        features = frozen_features(extractor, images, chunk_size)
        assert features.shape == reference.shape and features.dtype == torch.float32
        torch.testing.assert_close(features, reference, rtol=1e-4, atol=1e-5)
    assert frozen_features(extractor, images[:0]).shape == (0, reference.shape[1])


def test_frozen_features_can_feed_a_trained_layer():
    """Computed under inference mode, but returned as an ordinary tensor: autograd may save it for backward."""
    features = frozen_features(_extractor(), _images(4, size=SIZE))
    assert not features.is_inference()
    layer = torch.nn.Linear(features.shape[1], 2)
    layer(features).sum().backward()
    assert layer.weight.grad is not None


def test_the_chunk_size_is_chosen_per_device_type():
    """Moderate chunks on a CPU (`frozen_paths.py` measures them), large ones elsewhere; a plain function of the
    device, so the GPU choice is the same code as the CPU one."""
    assert frozen_chunk_size("cpu") == 128
    assert frozen_chunk_size(torch.device("cuda")) == 256 and frozen_chunk_size("meta") == 256


def test_view_features_equal_the_old_per_block_forward():
    """The look-ahead views (now gathered chunk by chunk, embedded by `frozen_features`) are the old code's: the
    images repeated per epoch, augmented 256 at a time, each chunk through the extractor at once."""
    extractor = _extractor("efficientnet")
    images = _images(5, seed=3)
    augmentation = Augmentation(SIZE, flip=True, crop=True, noise=False)
    views = ViewFeatures(images, [extractor], augmentation, torch.Generator().manual_seed(7), lookahead=600)
    first_epochs = torch.stack([views(torch.arange(5), epoch)[0] for epoch in range(3)])

    generator = torch.Generator().manual_seed(7)
    repeated = images.repeat(600 // 5, 1, 1, 1)
    with torch.no_grad():
        old = torch.cat(
            [extractor(resize(augmentation(repeated[i : i + 256], generator), SIZE)) for i in range(0, 600, 256)]
        ).view(120, 5, -1)
    torch.testing.assert_close(first_epochs, old[:3], rtol=1e-4, atol=1e-5)


def test_embed_resized_equals_the_plain_forward():
    extractor = _extractor("efficientnet")
    images = _images(7, size=40)
    with torch.no_grad():
        reference = extractor(resize(images, SIZE))
    torch.testing.assert_close(embed_resized(extractor, images), reference, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------ batched probes


@pytest.mark.parametrize(
    "config",
    [
        ProbeConfig(epochs=12, learning_rate=0.05, scale_learning_rate=False),  # fresh views
        ProbeConfig(epochs=12, learning_rate=0.05, scale_learning_rate=False, views=4),  # a bank
        ProbeConfig(epochs=12, learning_rate=0.05, scale_learning_rate=False, augment=False),
        ProbeConfig(epochs=6, learning_rate=0.05, scale_learning_rate=False, batch_size=4),  # several steps per epoch
    ],
    ids=["fresh", "bank", "no-augment", "minibatches"],
)
def test_probes_trained_together_equal_probes_trained_one_by_one(config):
    """Same seeds, same heads: each run draws what it would alone. Not bit-equal: one `(R, B, D) x (R, D, C)` matmul
    rounds differently from R `(B, D) x (D, C)` ones (and views are embedded in other chunks), so a tight tolerance."""
    extractor = _extractor()
    sets = [(_images(6, seed=s), torch.tensor([0, 1, 2, 0, 1, 2])) for s in range(3)]
    sets.append((_images(9, seed=9), torch.tensor([0, 1, 2] * 3)))  # another size: its own stacked group
    seeds = [4, 5, 6, 7]
    together = train_linear_probes(extractor, sets, 3, config, seeds)
    for (images, labels), seed, head in zip(sets, seeds, together):
        alone = train_linear_probe(extractor, images, labels, 3, config, seed)
        torch.testing.assert_close(head.weight, alone.weight, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(head.bias, alone.bias, rtol=1e-4, atol=1e-5)
    # and the runs did train apart: different seeds and sets give different heads
    assert not torch.allclose(together[0].weight, together[1].weight)


def test_the_evaluator_scores_each_run_as_a_lone_probe_would():
    evaluator = ProbeEvaluator(build_backbone("vit"), _processor(), color_dataset(3, 4, SIZE, seed=1), name="tiny")
    config = ProbeConfig(epochs=8, learning_rate=0.05, scale_learning_rate=False, views=3)
    data = color_dataset(3, 2, SIZE)
    images = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in data["image"]])
    images, labels = images.float() / 255, torch.tensor(data["label"])
    sets = {"a": lambda run: (images, labels), "b": lambda run: (images.flip(3), labels)}
    report = evaluate_training_sets(evaluator, sets, runs=2, config=config, seed=3)
    for name, training_set in sets.items():
        alone = [
            evaluator.score(train_linear_probe(evaluator.feature_extractor, *training_set(run), 3, config, 3 + run))
            for run in range(2)
        ]
        scores = report.scores[name]
        for together, single in zip(scores.per_run, alone):
            assert together["accuracy"] == pytest.approx(single["accuracy"], abs=1e-9)


# ------------------------------------------------------------------------------------------ the protocol


def test_the_fast_protocol_is_the_default_and_the_papers_one_flag_away():
    assert DistillationConfig().probe_views == FAST_PROBE_VIEWS
    assert DistillationConfig(probe_protocol="paper").probe_views is None
    assert DistillationConfig(probe_epochs=40).probe_views is None  # fresh views cost no more than the bank here
    assert DistillationConfig(probe_views=8).probe_views == 8
    with pytest.raises(ValueError, match="probe_protocol='paper'"):
        DistillationConfig(probe_protocol="paper", probe_views=8)
    with pytest.raises(ValueError, match="probe_protocol"):
        DistillationConfig(probe_protocol="quick")
    assert protocol_description(ProbeConfig(), 5).startswith("the papers' probe protocol (5 runs x 1000 epochs")
    assert protocol_description(ProbeConfig(views=FAST_PROBE_VIEWS), 5).startswith("the fast probe protocol")


@pytest.mark.parametrize("protocol", ["fast", "paper"])
def test_evaluate_runs_and_reports_the_protocol_it_says(tmp_path, caplog, protocol):
    """`evaluate()` reports the views it ran (`eval_probe_views`), and logs which protocol that was."""
    args = DistillationConfig(
        output_dir=str(tmp_path / "out"),
        num_steps=2,
        image_size=SIZE,
        save_grid=False,
        eval_runs=2,
        probe_epochs=FAST_PROBE_VIEWS + 1,
        probe_protocol=protocol,
    )
    distiller = Distiller(
        build_backbone("vit"),
        args,
        color_dataset(3, 3, SIZE),
        image_processor=_processor(),
        eval_dataset=color_dataset(3, 2, SIZE, seed=1),
    )
    distiller.train()
    seen = []
    original = ViewFeatures.__init__

    def spy(self, *arguments, **keywords):
        original(self, *arguments, **keywords)
        seen.append(None if self.bank is None else self.bank[0].shape[0])

    with caplog.at_level(logging.WARNING, logger="hf_sfm.evaluation.probe"), pytest.MonkeyPatch.context() as patch:
        patch.setattr(ViewFeatures, "__init__", spy)
        metrics = distiller.evaluate(metric_key_prefix=f"eval_{protocol}")
    expected_views = FAST_PROBE_VIEWS if protocol == "fast" else None
    assert seen == [expected_views] * 2  # what ran
    assert metrics[f"eval_{protocol}_probe_views"] == (expected_views or 0)  # what it reports
    said = "the fast probe protocol" if protocol == "fast" else "the papers' probe protocol"
    assert any(said in record.getMessage() for record in caplog.records)


# ------------------------------------------------------------------------------------------ the benchmark


def test_eval_speed_quick_runs_and_prints_both_protocols(tmp_path, monkeypatch, capsys):
    """In this process (a fresh one would spend most of the test importing), with its outputs under tmp_path."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", ""))  # put back after the run
    import eval_speed

    threads = torch.get_num_threads()
    try:
        eval_speed.main(["--quick", "--output_dir", str(tmp_path / "outputs")])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    for word in ("fast", "paper", "distilled", "random_real", "centroids", "stds"):
        assert word in out, out
