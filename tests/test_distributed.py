"""Several processes give the same statistics and the same images as one.

The multi-process tests launch `recipes/distill.py` on two real CPU processes (gloo) exactly as a user would,

    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no

with `ACCELERATE_USE_CPU=true` (`--cpu --num_processes 2` silently runs one process), and compare with the same
recipe run in this process. The other tests pin down the pieces that make this work, in one process.
"""

import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from conftest import (
    build_backbone,
    color_dataset,
    load_recipe,
    make_distiller,
    run_recipe_main,
    tiny_image_processor,
)
from safetensors.torch import load_file

from hf_sfm.synthesis.augment import Augmentation
from hf_sfm.utils.distributed import shard_range

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "distill.py"
LAUNCH = [
    sys.executable, "-m", "accelerate.commands.launch",
    "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
]  # fmt: skip
# 3 classes x ipc 3 = 9 images: uneven shards (5 + 4); pyramid levels are added during the run; checkpoints at 4, 6.
RUN = ["--ipc", "3", "--num_steps", "6", "--pyramid_level_every", "2", "--learning_rate", "0.05"]
RUN += ["--init", "noise", "--parameterization", "pyramid"]  # streaming needs noise; the pyramid grows across shards
RUN += ["--statistics_batch_size", "4", "--save_steps", "4", "--do_eval", "false", "--save_grid", "false"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny ViT with its processor, and a small dataset, saved the way users point the recipe at local data."""
    root = tmp_path_factory.mktemp("assets")
    build_backbone("vit").save_pretrained(root / "vit")
    tiny_image_processor().save_pretrained(root / "vit")
    datasets.DatasetDict({"train": color_dataset(3, 7)}).save_to_disk(str(root / "data"))
    return root


# In memory the run starts from the class centroids: each process's statistics pass keeps its shard's features and
# the init gathers them class by class (rows offset to the whole set), so two processes start from the images one
# does, without a second pass. A stream cannot start from centroids (it needs noise): the sharded noise init is
# covered there.
INIT = {"in_memory": ["--init", "centroid"], "streaming": ["--streaming", "true", "--streaming_num_shards", "4"]}


@pytest.fixture(scope="module")
def one_process(assets, tmp_path_factory):
    """The one-process run of each mode, in this process (`RUN` then the mode's flags: the later flag wins)."""
    output_dirs = {}
    for mode in INIT:
        output_dirs[mode] = tmp_path_factory.mktemp(f"one_process_{mode}")
        argv = ["--model_name_or_path", str(assets / "vit"), "--dataset_name", str(assets / "data")]
        run_recipe_main(load_recipe(), [*argv, "--output_dir", str(output_dirs[mode]), *RUN, *INIT[mode]])
    return output_dirs


def launch_two_processes(assets, output_dir, *extra) -> subprocess.CompletedProcess:
    # A datasets cache of the launch's own: the one-process run of the same data and backbone leaves a statistics
    # map under the same fingerprint in the session's HF_HOME, and a cache hit would skip the pass the test reads.
    env = dict(os.environ, ACCELERATE_USE_CPU="true", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    hf_home = output_dir.with_name(f"{output_dir.name}-hf_home")
    env.update(HF_HOME=str(hf_home), HF_DATASETS_CACHE=str(hf_home / "datasets"))
    # The pass is read from its progress bar: keep it on whatever the session's environment says about bars.
    env = {k: v for k, v in env.items() if not k.startswith("TQDM_") and "PROGRESS_BAR" not in k}
    env["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "0"  # has priority over any in-process switch
    argv = ["--model_name_or_path", str(assets / "vit"), "--dataset_name", str(assets / "data")]
    command = [*LAUNCH, str(RECIPE), *argv, "--output_dir", str(output_dir), *RUN, *extra]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def results(output_dir):
    return load_file(str(output_dir / "statistics.safetensors")), final_images(output_dir)


def final_images(output_dir):
    return load_file(str(output_dir / "distilled" / "synthetic.safetensors"))["images"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(INIT))
def test_two_processes_give_the_statistics_and_images_of_one(assets, one_process, tmp_path, mode):
    stderr = launch_two_processes(assets, tmp_path, *INIT[mode]).stderr
    assert '"num_processes": 2' in (tmp_path / "train_results.json").read_text()
    if mode == "in_memory":  # one `datasets.map` pass: the centroids come from the features it kept
        assert "Class statistics" in stderr and "Real features (baselines)" not in stderr
    # every process wrote its own shard of the checkpoint
    assert sorted(p.name for p in (tmp_path / "checkpoint-4").glob("synthetic-*")) == [
        "synthetic-00000-of-00002.safetensors",
        "synthetic-00001-of-00002.safetensors",
    ]
    (reference_statistics, reference_images), (statistics, images) = results(one_process[mode]), results(tmp_path)
    assert torch.equal(statistics["counts"], reference_statistics["counts"])
    torch.testing.assert_close(statistics["feature_sums"], reference_statistics["feature_sums"], rtol=1e-9, atol=1e-9)
    assert images.shape == (9, 3, 37, 37)
    torch.testing.assert_close(images, reference_images, rtol=0, atol=1e-5)
    assert (images - reference_images).abs().max() < 1e-5 < (images - images.roll(1, 0)).abs().max()

    if mode == "in_memory":  # the classes' centroids differ (ipc 3: a roll by 3 is the next class's images) ...
        assert (images - images.roll(3, 0)).abs().max() > 1e-2
        # ... and a 2-process checkpoint resumed by 1 process: the shards are re-cut
        resumed = tmp_path / "resumed_by_one"
        argv = ["--model_name_or_path", str(assets / "vit"), "--dataset_name", str(assets / "data")]
        argv += ["--output_dir", str(resumed), "--statistics_path", str(tmp_path / "statistics.safetensors")]
        argv += [*RUN, *INIT[mode], "--resume_from_checkpoint", str(tmp_path / "checkpoint-4")]
        run_recipe_main(load_recipe(), argv)
        torch.testing.assert_close(final_images(resumed), images, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------- pieces, one process


@pytest.mark.parametrize("num_items", [1, 2, 7, 9, 100])
@pytest.mark.parametrize("num_shards", [1, 2, 3, 8])
def test_shard_ranges_tile_the_set_contiguously_and_evenly(num_items, num_shards):
    ranges = [shard_range(num_items, num_shards, index) for index in range(num_shards)]
    assert ranges[0][0] == 0 and ranges[-1][1] == num_items
    assert all(ranges[i][1] == ranges[i + 1][0] for i in range(num_shards - 1))
    sizes = [stop - start for start, stop in ranges]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_a_shard_gets_the_same_augmented_views_as_in_the_whole_set():
    augmentation = Augmentation(output_size=16, noise=True, noise_std=0.1)
    images = torch.rand(9, 3, 20, 20)
    whole_generator = torch.Generator().manual_seed(3)
    whole = augmentation(images, whole_generator)
    for start, stop in [(0, 5), (5, 9)]:
        generator = torch.Generator().manual_seed(3)
        part = augmentation(images[start:stop], generator, shard=slice(start, stop), total=9)
        assert torch.equal(part, whole[start:stop])
        assert torch.equal(generator.get_state(), whole_generator.get_state())  # next step draws the same too
    with pytest.raises(ValueError, match="does not match"):
        augmentation(images[:4], torch.Generator(), shard=slice(0, 5), total=9)


def test_streaming_statistics_equal_in_memory_statistics(tmp_path):
    dataset = color_dataset(3, 7)
    computed = {}
    for name, data in [("memory", dataset), ("stream", dataset.to_iterable_dataset(num_shards=3))]:
        distiller = make_distiller(tmp_path / name, data, statistics_batch_size=4, init="noise")
        computed[name] = distiller.compute_statistics()
    assert isinstance(dataset.to_iterable_dataset(), datasets.IterableDataset)
    assert torch.equal(computed["stream"].counts, computed["memory"].counts)
    torch.testing.assert_close(computed["stream"].feature_sums, computed["memory"].feature_sums, rtol=1e-12, atol=1e-9)


def test_reduce_sum_is_the_identity_in_one_process(tmp_path):
    distiller = make_distiller(tmp_path, color_dataset(3, 2))
    assert distiller.reduce_sum is None  # one process keeps the exact single-process arithmetic


def test_a_streaming_dataset_with_an_image_init_is_refused_up_front(tmp_path):
    stream = color_dataset(3, 4).to_iterable_dataset(num_shards=2)
    for init in ("centroid", "real"):
        with pytest.raises(ValueError, match=rf"init='{init}'.*streaming.*init='noise'"):
            make_distiller(tmp_path, stream, init=init)
