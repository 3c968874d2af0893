"""Class statistics equal a direct per-class mean, however the map is batched or sharded."""

import pytest
import torch
from conftest import color_dataset

from hf_sfm.data.statistics import ClassStatistics, compute_class_statistics


def _embed(images):
    """A deterministic 'backbone': per-channel means and stds of the image."""
    arrays = torch.stack([torch.as_tensor(list(image.getdata()), dtype=torch.float64) for image in images])
    return torch.cat([arrays.mean(1), arrays.std(1)], dim=1)


def _direct_means(dataset, num_classes):
    features = _embed(dataset["image"])
    labels = torch.tensor(dataset["label"])
    return torch.stack([features[labels == c].mean(0) for c in range(num_classes)])


@pytest.mark.parametrize("batch_size", [1, 5, 7, 1000])
def test_statistics_equal_direct_per_class_means(batch_size):
    dataset = color_dataset(num_classes=4, per_class=6).shuffle(seed=0)
    statistics = compute_class_statistics(
        dataset, _embed, image_column="image", label_column="label", class_names=list("abcd"), batch_size=batch_size
    )
    assert statistics.counts.tolist() == [6, 6, 6, 6]
    torch.testing.assert_close(statistics.class_means.double(), _direct_means(dataset, 4), rtol=1e-6, atol=1e-5)


def test_sharded_statistics_sum_to_the_whole():
    dataset = color_dataset(num_classes=3, per_class=7).shuffle(seed=1)
    kwargs = {"image_column": "image", "label_column": "label", "class_names": list("abc"), "batch_size": 4}
    whole = compute_class_statistics(dataset, _embed, **kwargs)
    shards = [compute_class_statistics(dataset.shard(3, i), _embed, **kwargs) for i in range(3)]
    torch.testing.assert_close(sum(s.feature_sums for s in shards), whole.feature_sums)
    assert torch.equal(sum(s.counts for s in shards), whole.counts)


def test_streaming_statistics_equal_in_memory():
    dataset = color_dataset(num_classes=3, per_class=5)
    kwargs = {"image_column": "image", "label_column": "label", "class_names": list("abc"), "batch_size": 4}
    in_memory = compute_class_statistics(dataset, _embed, **kwargs)
    streamed = compute_class_statistics(dataset.to_iterable_dataset(num_shards=2), _embed, **kwargs)
    torch.testing.assert_close(streamed.feature_sums, in_memory.feature_sums)
    assert torch.equal(streamed.counts, in_memory.counts)


def test_save_load_round_trip_is_bit_exact(tmp_path):
    statistics = ClassStatistics(
        torch.randn(3, 4, dtype=torch.float64),
        torch.tensor([2, 5, 1]),
        ["x", "y", "z"],
        {"backbone": "tiny", "dataset_fingerprint": "abc"},
    )
    statistics.save(tmp_path / "stats.safetensors")
    loaded = ClassStatistics.load(tmp_path / "stats.safetensors")
    assert torch.equal(loaded.feature_sums, statistics.feature_sums) and torch.equal(loaded.counts, statistics.counts)
    assert loaded.class_names == ["x", "y", "z"] and loaded.metadata == statistics.metadata


def test_mismatched_statistics_are_refused():
    statistics = ClassStatistics(
        torch.zeros(2, 3, dtype=torch.float64),
        torch.ones(2, dtype=torch.long),
        ["a", "b"],
        {"backbone": "model-a", "dataset_fingerprint": "f1"},
    )
    statistics.check_compatible({"backbone": "model-a", "dataset_fingerprint": "f1"})
    with pytest.raises(ValueError, match="backbone"):
        statistics.check_compatible({"backbone": "model-b", "dataset_fingerprint": "f1"})


def test_class_without_images_is_named():
    statistics = ClassStatistics(torch.zeros(2, 3, dtype=torch.float64), torch.tensor([4, 0]), ["cat", "dog"])
    with pytest.raises(ValueError, match="dog"):
        _ = statistics.class_means


def test_out_of_range_labels_are_reported():
    dataset = color_dataset(num_classes=3, per_class=2)
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        compute_class_statistics(dataset, _embed, image_column="image", label_column="label", class_names=["a", "b"])
