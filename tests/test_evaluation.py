"""The probe protocol (determinism, cached test features, typed results) and the real-image baselines."""

import itertools
import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="hf_sfm_test_home_"))

import numpy as np
import pytest
import torch
from conftest import color_dataset
from transformers import ViTConfig, ViTImageProcessor, ViTModel

import hf_sfm.evaluation.probe as evaluation
from hf_sfm.backbone.features import FeatureExtractor
from hf_sfm.data.preprocessing import ImagePreprocessing
from hf_sfm.data.real_images import random_real_indices
from hf_sfm.evaluation.baselines import (
    RealBaselines,
    centroid_indices,
    kmeans,
    near_mean_indices,
    nearest_to_mean_indices,
    neighbor_indices,
)
from hf_sfm.evaluation.probe import ProbeConfig, ProbeEvaluator, evaluate_training_sets, train_linear_probe
from hf_sfm.evaluation.results import result_rows

SIZE = 32
FAST = ProbeConfig(epochs=6, learning_rate=0.1)


def _vit(seed=0):
    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=SIZE, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    return ViTModel(config, add_pooling_layer=False).eval()


def _processor():
    return ViTImageProcessor(size={"height": SIZE, "width": SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def _dataset(num_classes=3, per_class=8, seed=0):
    return color_dataset(num_classes, per_class, SIZE, seed)


@pytest.fixture(scope="module")
def extractor():
    processor = _processor()
    return FeatureExtractor(_vit(), ImagePreprocessing.from_image_processor(processor))


@pytest.fixture(scope="module")
def evaluator():
    return ProbeEvaluator(_vit(), _processor(), _dataset(per_class=5, seed=1), name="tiny-vit")


def _images(n=6, seed=0):
    return torch.rand(n, 3, 36, 36, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ the protocol


@pytest.mark.parametrize(
    "probe",
    [
        FAST,
        ProbeConfig(epochs=20, learning_rate=0.1, views=3),
        ProbeConfig(epochs=20, learning_rate=0.1, augment=False),
    ],
    ids=["fresh-views", "precomputed-views", "no-augmentation"],
)
def test_probe_is_deterministic_per_seed(extractor, probe):
    images, labels = _images(), torch.tensor([0, 1, 2, 0, 1, 2])
    first = train_linear_probe(extractor, images, labels, 3, probe, seed=5)
    again = train_linear_probe(extractor, images, labels, 3, probe, seed=5)
    other = train_linear_probe(extractor, images, labels, 3, probe, seed=6)
    assert torch.equal(first.weight, again.weight) and torch.equal(first.bias, again.bias)
    assert not torch.equal(first.weight, other.weight)


def test_probe_follows_the_reference_recipe(extractor, monkeypatch):
    """Head N(0, init_std) with zero bias, Adam at lr · min(100, n) / 256, cosine to zero, one loop for all fits."""
    seen = {}
    original = evaluation.fit_linear

    def spy(layer, batches, loss_fn, num_examples, config, generator, progress_desc=None):
        seen["std"] = float(layer.weight.detach().std())
        seen["bias"] = float(layer.bias.detach().abs().max())
        seen["lr"] = config.learning_rate_for(num_examples)
        return original(layer, batches, loss_fn, num_examples, config, generator, progress_desc)

    monkeypatch.setattr(evaluation, "fit_linear", spy)
    train_linear_probe(extractor, _images(), torch.tensor([0, 1, 2, 0, 1, 2]), 3, ProbeConfig(epochs=1, init_std=0.5))
    assert abs(seen["std"] - 0.5) < 0.1 and seen["bias"] == 0
    assert seen["lr"] == pytest.approx(1e-3 * 6 / 256)
    defaults = ProbeConfig()
    assert (defaults.epochs, defaults.views, defaults.augment, defaults.batch_size) == (1000, None, True, 100)
    with pytest.raises(ValueError, match="views"):
        ProbeConfig(views=-1)


def _fixed(images, labels):
    return lambda run: (images, labels)


def test_evaluator_computes_test_features_once_and_is_deterministic(evaluator, monkeypatch):
    calls = []
    original = evaluation.embed_dataset

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(evaluation, "embed_dataset", counting)
    evaluator._test = None
    training_set = _fixed(_images(), torch.tensor([0, 1, 2, 0, 1, 2]))
    first = evaluator.probe("distilled", training_set, runs=2, config=FAST, seed=0)
    second = evaluator.probe("distilled", training_set, runs=2, config=FAST, seed=0)
    assert len(calls) == 1
    assert first == second
    shifted = evaluator.probe("distilled", training_set, runs=1, config=FAST, seed=1)
    assert shifted.per_run[0] == first.per_run[1]  # run r uses seed + r


def test_report_flattens_to_trainer_metrics_with_population_std(evaluator):
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    sets = {"distilled": _fixed(_images(), labels), "random_real": lambda run: (_images(seed=10 + run), labels)}
    report = evaluate_training_sets(evaluator, sets, runs=3, config=FAST)
    per_run = [run["accuracy"] for run in report.scores["distilled"].per_run]
    assert report.scores["distilled"].seeds == (0, 1, 2) and report.scores["distilled"].num_train_images == 6
    metrics = report.metrics("eval")
    assert metrics["eval_accuracy"] == pytest.approx(np.mean(per_run))
    assert metrics["eval_accuracy_std"] == pytest.approx(np.std(per_run))  # population std, the one definition
    assert metrics["eval_runs"] == 3 and metrics["eval_backbone"] == "tiny-vit"
    assert metrics["eval_num_test_images"] == 15 and metrics["eval_probe_epochs"] == 6
    assert 0 <= metrics["eval_random_real_accuracy"] <= metrics["eval_random_real_top5_accuracy"] <= 1
    import json

    json.dumps(metrics)  # plain types only: save_metrics and cards take it as it is
    rows = {row.training_set: row for row in result_rows(metrics)}
    assert rows["distilled"].accuracy == metrics["eval_accuracy"] and rows["distilled"].runs == 3
    assert rows["random_real"].accuracy_std == metrics["eval_random_real_accuracy_std"]


def test_compute_metrics_replaces_the_default_metrics(extractor):
    seen = []

    def compute_metrics(prediction):
        seen.append((prediction.predictions.shape, prediction.label_ids.shape))
        return {"mean_logit": float(prediction.predictions.mean())}

    evaluator = ProbeEvaluator(
        None, _processor(), _dataset(per_class=5, seed=1), feature_extractor=extractor, compute_metrics=compute_metrics
    )
    scores = evaluator.probe("distilled", _fixed(_images(), torch.tensor([0, 1, 2, 0, 1, 2])), runs=2, config=FAST)
    assert seen == [((15, 3), (15,))] * 2 and scores.metric_names == ["mean_logit"]


def test_full_dataset_probe_beats_chance_and_augmented_variant_runs(evaluator):
    train = _dataset(per_class=8, seed=2)
    probe = ProbeConfig(epochs=50, learning_rate=0.5, augment=False)
    full = evaluator.probe_full_dataset(train, runs=2, config=probe)
    assert full.num_train_images == 24 and full.training_set == "full_dataset"
    assert full.mean() > 0.6, full
    augmented = evaluator.probe_full_dataset(train, runs=1, config=ProbeConfig(epochs=3, learning_rate=0.5, views=2))
    assert augmented.num_train_images == 24 and 0 <= augmented.mean() <= 1


# ------------------------------------------------------------------------------------------------ baselines


def _clustered(seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(3).repeat_interleave(20)
    features = torch.randn(60, 4, generator=generator) + 5 * torch.eye(4)[labels]
    return features, labels


def test_centroid_is_the_argmin_distance_to_the_class_mean():
    features, labels = _clustered()
    chosen = centroid_indices(features, labels, 3, ipc=1)
    for c in range(3):
        members = (labels == c).nonzero().flatten()
        distances = (features[members] - features[members].mean(0)).norm(dim=1)
        assert int(chosen[c]) == int(members[distances.argmin()])
    # Given class means (e.g. the distillation statistics) are used as the centers.
    means = torch.stack([features[int((labels == c).nonzero()[3])] for c in range(3)])
    assert torch.equal(centroid_indices(features, labels, 3, ipc=1, class_means=means), torch.tensor([3, 23, 43]))


def test_near_mean_sets_are_the_next_nearest_images_never_the_centroid_set():
    """The centroid set is rank 1; the near-mean baseline's draws are ranks 2, 3, …, each one farther out."""
    features, labels = _clustered()
    means = torch.stack([features[labels == c].mean(0) for c in range(3)]) + 0.3
    for class_means in (None, means):
        first = nearest_to_mean_indices(features, labels, 3, 1, class_means)
        assert torch.equal(first, centroid_indices(features, labels, 3, ipc=1, class_means=class_means))
    draws = [near_mean_indices(features, labels, 3, ipc=1, draw=d, class_means=means) for d in range(3)]
    for d, chosen in enumerate(draws):
        assert torch.equal(chosen, nearest_to_mean_indices(features, labels, 3, d + 2, means))
        assert labels[chosen].tolist() == [0, 1, 2]
    distances = [(features[i] - means).norm(dim=1) for i in (first, *draws)]
    for nearer, farther in itertools.pairwise(distances):
        assert bool((nearer <= farther).all()) and not torch.equal(nearer, farther)
    # ipc > 1: the k-means medoids of other seeds than the centroid set's.
    centroid_set = centroid_indices(features, labels, 3, ipc=4, seed=7)
    other = near_mean_indices(features, labels, 3, ipc=4, draw=0, seed=7)
    assert torch.equal(other, centroid_indices(features, labels, 3, ipc=4, seed=8))
    assert labels[other].tolist() == labels[centroid_set].tolist() and not torch.equal(other, centroid_set)
    with pytest.raises(ValueError, match="has 20 real training images; 21 were requested"):
        near_mean_indices(features, labels, 3, ipc=1, draw=19)


def test_centroids_for_ipc_gt_1_cover_the_clusters_of_a_class():
    generator = torch.Generator().manual_seed(0)
    offsets = torch.tensor([[0.0, 0.0], [50.0, 0.0], [0.0, 50.0]])
    points = (offsets.repeat_interleave(10, 0) + torch.randn(30, 2, generator=generator)).double()
    centers = kmeans(points, 3, torch.Generator().manual_seed(1))
    assert sorted((centers.round() // 25).tolist()) == sorted((offsets // 25).tolist())
    chosen = centroid_indices(points.float(), torch.zeros(30, dtype=torch.long), 1, ipc=3, seed=0)
    assert sorted((chosen // 10).tolist()) == [0, 1, 2]  # one real image from each sub-cluster


def test_neighbor_is_the_argmin_distance_within_the_class_and_distinct():
    features, labels = _clustered()
    queries = torch.randn(3, 4, generator=torch.Generator().manual_seed(3)) * 3
    query_labels = torch.tensor([2, 0, 1])
    chosen = neighbor_indices(features, labels, queries, query_labels)
    for query, label, pick in zip(queries, query_labels, chosen):
        members = (labels == label).nonzero().flatten()
        assert int(pick) == int(members[(features[members] - query).norm(dim=1).argmin()])
    twins = neighbor_indices(features, labels, queries[[0, 0]], torch.tensor([2, 2]))
    assert twins[0] != twins[1] and set(labels[twins].tolist()) == {2}


def test_random_real_draws_ipc_per_class_per_seed():
    labels = torch.arange(4).repeat(10)
    chosen = random_real_indices(labels, 4, ipc=3, seed=0)
    assert labels[chosen].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert len(set(chosen.tolist())) == 12
    assert torch.equal(chosen, random_real_indices(labels, 4, ipc=3, seed=0))
    assert not torch.equal(chosen, random_real_indices(labels, 4, ipc=3, seed=1))
    with pytest.raises(ValueError, match="Class 0 has 10"):
        random_real_indices(labels, 4, ipc=11)


def test_real_baselines_return_class_major_real_images(extractor):
    dataset = _dataset(per_class=4)
    preprocessing = ImagePreprocessing.from_image_processor(_processor())
    baselines = RealBaselines(dataset, extractor, preprocessing, image_size=36)
    features, labels, rows = baselines.features()
    assert features.shape == (12, 32) and rows.tolist() == list(range(12))
    for images, chosen in (baselines.random(2, seed=0), baselines.centroids(2), baselines.centroids(1)):
        assert images.shape[1:] == (3, 36, 36) and images.min() >= 0 and images.max() <= 1
        assert chosen.tolist() == sorted(chosen.tolist()) and len(set(chosen.tolist())) == 3
    # A distilled image that *is* a real image (at the backbone's size) has that real image as its neighbour.
    same_size = RealBaselines(dataset, extractor, preprocessing, image_size=SIZE)
    real_images = same_size.images(torch.tensor([5, 9]))
    neighbours, neighbour_labels = same_size.neighbors(real_images, labels[[5, 9]])
    assert torch.equal(neighbours, real_images) and neighbour_labels.tolist() == labels[[5, 9]].tolist()
