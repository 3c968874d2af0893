"""What a run reads, prints and publishes, round 2: the training set embedded once (statistics and the centroid
init from one pass), sizes a user did not choose warned about from Python too, and the last noise and missing lines
(load reports, the probe's progress bars, the recipe's final lines)."""

import contextlib
import functools
import json
import logging

import datasets
import pytest
import torch
import transformers
from conftest import color_dataset, make_distiller

import hf_sfm.backbone.embedding as embedding_module
import hf_sfm.backbone.frozen as frozen_module
from hf_sfm.evaluation.baselines import RealBaselines

_distiller = functools.partial(
    make_distiller,
    ipc=1,
    num_steps=2,
    learning_rate=0.01,
    seed=0,
    image_size=32,
    save_grid=False,
    logging_steps=0,
)


@pytest.fixture
def embedded_images(monkeypatch):
    """How many training images went through the backbone's no-grad forward (statistics pass, feature columns)."""
    count = [0]

    def counting(original):
        def frozen_features(feature_extractor, images, *args, **kwargs):
            count[0] += len(images)
            return original(feature_extractor, images, *args, **kwargs)

        return frozen_features

    for module in (frozen_module, embedding_module):
        monkeypatch.setattr(module, "frozen_features", counting(module.frozen_features))
    return count


def _today_centroid_rows(distiller, ipc: int) -> torch.Tensor:
    """The rows the centroid init chose before the one-pass design: a second, separate feature pass."""
    real = distiller.real_data
    baselines = RealBaselines(
        real.dataset,
        distiller.feature_extractor,
        distiller.preprocessing,
        distiller.image_size,
        image_column=real.image_column,
        label_column=real.label_column,
        class_names=real.class_names,
    )
    return baselines.centroid_rows(ipc, seed=distiller.args.seed, class_means=distiller.statistics.class_means)


# ---------------------------------------------------------------------------------------------- item 5: one pass


@pytest.mark.parametrize("ipc", [1, 2])
def test_a_default_run_embeds_the_training_set_once_and_picks_todays_centroids(tmp_path, embedded_images, ipc):
    dataset = color_dataset(per_class=6)
    distiller = _distiller(tmp_path / "out", dataset=dataset, ipc=ipc)
    assert distiller.args.init == "centroid" and not distiller.args.eval_baselines  # the default run
    distiller.train()
    assert embedded_images[0] == len(dataset)  # statistics and the centroid init: one pass
    chosen = (
        distiller.evaluator.baselines()
        .using(distiller.statistics_cache.feature_source())
        .centroid_rows(ipc, seed=0, class_means=distiller.statistics.class_means)
    )
    assert torch.equal(chosen, _today_centroid_rows(distiller, ipc))
    # and those rows are the images the synthetic set started from
    init = _distiller(tmp_path / "again", dataset=dataset, ipc=ipc, statistics=distiller.statistics)
    start = init.init_synthetic().decode().float().cpu()
    expected = distiller.evaluator.baselines().images(chosen)
    torch.testing.assert_close(start, expected, atol=1e-3, rtol=0)  # the pyramid round-trips to float rounding


def test_the_kept_features_are_the_baselines_features_exactly(tmp_path):
    distiller = _distiller(tmp_path / "out")
    distiller.compute_statistics()
    kept = distiller.statistics_cache.features().all(distiller.num_classes)
    today = RealBaselines(
        distiller.train_dataset, distiller.feature_extractor, distiller.preprocessing, distiller.image_size
    ).features()
    for mine, theirs in zip(kept, today, strict=True):
        assert torch.equal(mine, theirs)
    # the statistics are the sums of exactly these features
    features, labels, _ = kept
    sums = torch.zeros_like(distiller.statistics.feature_sums).index_add_(0, labels, features.double())
    torch.testing.assert_close(sums, distiller.statistics.feature_sums, rtol=1e-12, atol=1e-9)


def test_baselines_reuse_the_statistics_pass_when_its_features_are_identical(tmp_path, embedded_images):
    distiller = _distiller(tmp_path / "out", eval_baselines=["centroids", "near_mean", "neighbors"])
    distiller.compute_statistics()
    assert embedded_images[0] == len(distiller.train_dataset)
    baselines = distiller.evaluator.baselines()
    baselines.centroids(1, class_means=distiller.statistics.class_means)
    baselines.near_mean(1, draw=0, class_means=distiller.statistics.class_means)
    assert embedded_images[0] == len(distiller.train_dataset)  # no "Real features (baselines)" pass


def test_baselines_embed_their_own_where_the_pass_ran_under_autocast(tmp_path):
    distiller = _distiller(tmp_path / "out", mixed_precision="bf16")
    assert distiller.evaluator.train_features is None  # bf16 features are not the baselines' float32 ones
    assert distiller.statistics_cache.feature_source() is not None  # the init still chooses from the pass's


def test_statistics_reused_from_a_file_take_their_features_from_the_datasets_cache(tmp_path, embedded_images):
    color_dataset(per_class=5).save_to_disk(str(tmp_path / "data"))
    dataset = datasets.load_from_disk(str(tmp_path / "data"))  # has cache files: maps are cached beside them
    first = _distiller(tmp_path / "out", dataset=dataset)
    first.train()
    assert embedded_images[0] == len(dataset)
    second = _distiller(
        tmp_path / "out", dataset=datasets.load_from_disk(str(tmp_path / "data")), overwrite_output_dir=True
    )
    second.train()  # statistics from the file, centroid features from the cache of the identical pass
    assert embedded_images[0] == len(dataset)
    assert torch.equal(second.synthetic_images(), first.synthetic_images())


# ---------------------------------------------------------------------------------------------- item 6: sizes


def _warnings_of(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and text in r.getMessage()]


def test_a_python_distiller_warns_once_about_sizes_it_did_not_choose_and_the_card_shows_them(tmp_path, caplog):
    small = color_dataset(per_class=3, size=12)  # 12 px data, the tiny processor's 32 px input
    with caplog.at_level("WARNING"):
        distiller = _distiller(tmp_path / "out", dataset=small, image_size=None)
    warned = _warnings_of(caplog, "The training images are 12 px")
    assert len(warned) == 1, warned
    assert "asks for 32 px" in warned[0] and "crop_size=12" in warned[0] and "image_size=12" in warned[0]
    assert distiller.image_size == round(32 * 8 / 7)  # the defaults themselves are unchanged
    distiller.train()
    folder = distiller.save_distilled()
    card = (folder / "README.md").read_text()
    assert f"image_size: {distiller.image_size}" in card and "crop_size: 32" in card
    assert "image_size: null" not in card and "crop_size: null" not in card
    saved = json.loads((folder / "distillation_config.json").read_text())["config"]
    assert (saved["image_size"], saved["crop_size"]) == (distiller.image_size, 32)


def test_sizes_the_user_chose_or_that_fit_the_data_raise_no_warning(tmp_path, caplog):
    with caplog.at_level("WARNING"):
        _distiller(tmp_path / "a", dataset=color_dataset(per_class=3, size=12), crop_size=32)  # chosen
        _distiller(tmp_path / "b", dataset=color_dataset(per_class=3, size=32))
    assert not _warnings_of(caplog, "The training images are")


# ---------------------------------------------------------------------------------------------- item 8: noise, lines


@contextlib.contextmanager
def transformers_messages():
    """What transformers logs (its own handler keeps the stream of whichever test first configured it, so a captured
    stream may miss it): every record of its loggers, at its default verbosity (warnings); the list is never empty
    since one marker record is logged first, proving the handler listens."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler, verbosity = Collect(level=logging.WARNING), transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_warning()
    root = logging.getLogger("transformers")
    root.addHandler(handler)
    try:
        transformers.logging.get_logger("transformers.modeling_utils").warning("listening")
        yield messages
    finally:
        root.removeHandler(handler)
        transformers.logging.set_verbosity(verbosity)


def test_a_light_classifier_loading_a_classifier_checkpoint_as_its_backbone_prints_no_load_report(tmp_path):
    """The referenced checkpoint's own head is dropped on purpose: transformers' LOAD REPORT of it is noise."""
    from test_inherited import pixel_batch, random_classifier
    from transformers import AutoModelForImageClassification, ResNetForImageClassification

    model = random_classifier("resnet")
    hub_classifier = ResNetForImageClassification(model.backbone.config)  # a backbone published with its head
    hub_classifier.resnet.load_state_dict(model.backbone.state_dict())
    hub_classifier.save_pretrained(tmp_path / "resnet-classifier")
    model.config.backbone_name_or_path = str(tmp_path / "resnet-classifier")
    model.save_pretrained(tmp_path / "light", embed_backbone=False)
    model.save_pretrained(tmp_path / "full")
    with transformers_messages() as messages:
        loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "light")
        full = AutoModelForImageClassification.from_pretrained(tmp_path / "full")
    assert messages and not any("LOAD REPORT" in message or "UNEXPECTED" in message for message in messages)
    assert full.config.embed_backbone and not loaded.config.embed_backbone
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values=pixel_batch()).logits, model(pixel_values=pixel_batch()).logits)


@pytest.mark.parametrize("enabled", [True, False])
def test_the_fits_progress_bars_follow_the_ecosystems_switch(monkeypatch, tmp_path, enabled):
    """`--disable_tqdm` calls `transformers.utils.logging.disable_progress_bar()`; the probe's, the inherited head's
    and the projector's bars (all `linear_fit` fits) honour it."""
    import torch.nn.functional as F
    from tqdm.auto import tqdm
    from transformers.utils import logging as transformers_logging

    from hf_sfm.evaluation import linear_fit
    from hf_sfm.evaluation.probe import ProbeConfig, train_linear_probes

    bars = []

    class RecordedBar(tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(kwargs["disable"])  # (a closed bar reads `disable=True` whatever it was)

    monkeypatch.setattr(linear_fit, "tqdm", RecordedBar)
    if not enabled:
        transformers_logging.disable_progress_bar()
    try:
        features, labels = torch.randn(8, 4), torch.arange(8) % 2
        config = linear_fit.LinearFitConfig(epochs=3)
        batches = lambda index, epoch: (features[index], labels[index])  # noqa: E731
        generator = torch.Generator().manual_seed(0)
        linear_fit.fit_linear(torch.nn.Linear(4, 2), batches, F.cross_entropy, 8, config, generator, progress_desc="h")
        extractor = _distiller(tmp_path / "out").feature_extractor
        probe = ProbeConfig(epochs=2, augment=False)
        train_linear_probes(extractor, [(torch.rand(4, 3, 32, 32), torch.arange(4) % 3)], 3, probe, seeds=[0])
    finally:
        transformers_logging.enable_progress_bar()
    assert bars == [not enabled, not enabled]  # the fit's bar and the probe's


def test_a_recipe_run_that_pushes_ends_with_its_outputs_and_the_pushed_urls_and_no_progress_bars(tmp_path):
    """One quiet run (`--disable_tqdm`) through evaluation, the inherited classifier and a push to a local Hub."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from hub_server import TEST_TOKEN, FakeHub

    repo = Path(__file__).resolve().parents[1]
    from conftest import build_backbone, tiny_image_processor

    build_backbone("vit").save_pretrained(tmp_path / "vit")
    tiny_image_processor().save_pretrained(tmp_path / "vit")
    splits = {"train": color_dataset(3, 6), "test": color_dataset(3, 3, seed=1)}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "data"))
    output_dir = tmp_path / "run"
    with FakeHub() as hub:
        env = dict(os.environ, PYTHONPATH=str(repo), HF_ENDPOINT=hub.endpoint, HF_TOKEN=TEST_TOKEN)
        env.update(HF_HUB_DISABLE_XET="1", HF_HUB_OFFLINE="0")
        command = [
            sys.executable, str(repo / "recipes" / "distill.py"), "--disable_tqdm", "true",
            "--model_name_or_path", str(tmp_path / "vit"), "--dataset_name", str(tmp_path / "data"),
            "--output_dir", str(output_dir), "--max_steps", "1", "--grid_steps", "0",
            "--probe_epochs", "2", "--eval_runs", "1", "--probe_learning_rate", "0.01",
            "--inherit_projector_epochs", "2", "--inherit_head_epochs", "2",
            "--push_to_hub", "true", "--hub_model_id", "tester/shapes-classifier",
            "--hub_dataset_id", "tester/shapes-distilled",
        ]  # fmt: skip
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
        assert result.returncode == 0, result.stderr[-4000:]
        assert hub.files("tester/shapes-distilled", "dataset") and hub.files("tester/shapes-classifier", "model")
    log = result.stderr + result.stdout
    last = [line for line in log.splitlines() if line.strip()][-3:]
    assert f"Outputs in {output_dir}" in last[0], last
    assert f"Pushed the dataset to {hub.endpoint}/datasets/tester/shapes-distilled" in last[1], last
    assert f"Pushed the classifier to {hub.endpoint}/tester/shapes-classifier" in last[2], last
    assert "%|" not in log and "it/s]" not in log, [line for line in log.splitlines() if "%|" in line][:3]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_the_kept_features_are_each_images_own_with_or_without_decoding_workers(num_workers):
    """The pass keeps exactly the features `embed` gave each row (the GPU path decodes in workers), skipping none
    but the undecodable, with the sums unchanged by keeping them."""
    from hf_sfm.data.preprocessing import ImagePreprocessing
    from hf_sfm.data.statistics import compute_class_statistics

    preprocessing = ImagePreprocessing(crop_size=16, resize_size=20, image_mean=(0.5,) * 3, image_std=(0.5,) * 3)

    def embed(pixels):
        images = ImagePreprocessing.to_unit_range(pixels)
        return torch.cat([images.mean((2, 3)), images.std((2, 3))], dim=1)

    dataset = color_dataset(3, 5)
    kwargs = dict(image_column="image", label_column="label", class_names=["a", "b", "c"], batch_size=4)
    kwargs.update(preprocessing=preprocessing, num_workers=num_workers)
    kept = compute_class_statistics(dataset, embed, keep_features=True, **kwargs)
    plain = compute_class_statistics(dataset, embed, **kwargs)
    assert plain.features is None and torch.equal(kept.feature_sums, plain.feature_sums)
    features, labels, rows = kept.features.all(3)
    assert rows.tolist() == list(range(len(dataset))) and labels.tolist() == dataset["label"]
    assert torch.equal(features, embed(preprocessing.pixels(dataset["image"])))
