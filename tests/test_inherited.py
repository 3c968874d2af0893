"""Classifier inheritance: the `from_pretrained` model, its round trips, the pipeline, and the training of its parts.

Tiny random backbones from configs and in-memory datasets; no network. The `trust_remote_code` test runs a Python
that cannot import hf_sfm (no `site` processing, so the editable-install finder is never installed).
"""

import os
import site
import subprocess
import sys
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="hf_sfm_test_home_"))

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from conftest import make_distiller, tiny_image_processor
from safetensors import safe_open
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    ResNetConfig,
    ResNetModel,
    ViTConfig,
    ViTModel,
    pipeline,
)

import hf_sfm
from hf_sfm import SFMInheritedClassifier, SFMInheritedConfig
from hf_sfm.backbone.embedding import embed_dataset, features_and_labels
from hf_sfm.backbone.features import FeatureExtractor
from hf_sfm.data.preprocessing import ImagePreprocessing
from hf_sfm.evaluation.linear_fit import ViewFeatures, fit_linear, new_linear
from hf_sfm.inheritance import (
    BANK_LIMIT,
    ClassifierInheritance,
    InheritedHeadConfig,
    KDConfig,
    ProjectorConfig,
    accuracy,
    bank_views,
    build_inherited_classifier,
    fit_projector,
    image_processor_for,
    projection_mse,
    train_kd_head,
)
from hf_sfm.synthesis.augment import Augmentation

SIZE = 32
PREPROCESSING = ImagePreprocessing(SIZE, SIZE, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def tiny_vit(seed: int = 0) -> ViTModel:
    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=SIZE, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    return ViTModel(config, add_pooling_layer=False).eval()


def tiny_resnet(seed: int = 1) -> ResNetModel:
    torch.manual_seed(seed)
    return ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")).eval()


def tiny_clip(seed: int = 2) -> CLIPVisionModelWithProjection:
    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        image_size=SIZE,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        projection_dim=24,
    )
    return CLIPVisionModelWithProjection(config).eval()


BACKBONES = {
    "vit": (tiny_vit, "cls_token"),
    "resnet": (tiny_resnet, "pooler_output"),
    "clip": (tiny_clip, "image_embeds"),
}


def color_dataset(num_classes: int = 3, per_class: int = 12, seed: int = 0) -> datasets.Dataset:
    """Noisy images whose class is their dominant colour channel: linearly separable through any backbone."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for c in range(num_classes):
        for _ in range(per_class):
            array = rng.integers(0, 90, (SIZE, SIZE, 3), dtype=np.uint8)
            array[..., c] += 140
            images.append(PIL.Image.fromarray(array))
            labels.append(c)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["red", "green", "blue"][:num_classes])}
    )
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


def random_classifier(family: str, num_classes: int = 3, distill_dim: int = 12) -> SFMInheritedClassifier:
    builder, _ = BACKBONES[family]
    extractor = FeatureExtractor(builder(), PREPROCESSING)
    eval_dim = extractor(torch.zeros(1, 3, SIZE, SIZE)).shape[1]
    torch.manual_seed(3)
    projector, head = nn.Linear(eval_dim, distill_dim), nn.Linear(distill_dim, num_classes)
    return build_inherited_classifier(extractor, PREPROCESSING, projector, head, ["red", "green", "blue"][:num_classes])


def pixel_batch(num_images: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(num_images, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and far faster than two on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dataset():
    return color_dataset()


@pytest.fixture(scope="module")
def distiller(dataset, tmp_path_factory):
    """A distilled toy set (2 images per class)."""
    distiller = make_distiller(
        tmp_path_factory.mktemp("distill"),
        dataset,
        model=tiny_vit(),
        processor=tiny_image_processor(SIZE),
        ipc=2,
        num_steps=8,
        pyramid_level_every=2,
        save_grid=False,
        logging_steps=0,
    )
    distiller.train()
    return distiller


@pytest.fixture(scope="module")
def inheritance(distiller):
    """Its classifier inheritance, with the head trained on the full real features (same-backbone projector)."""
    inheritance = distiller.classifier_inheritance()
    inheritance.train_head(epochs=60, learning_rate=1e-2, batch_size=16)
    inheritance.fit_projector(distiller.synthetic_images())
    return inheritance


# ---------------------------------------------------------------------------------------------------- the model


@pytest.mark.parametrize("family", list(BACKBONES))
def test_save_and_from_pretrained_give_bit_identical_logits(family, tmp_path):
    model = random_classifier(family)
    pixels = pixel_batch()
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits
    model.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), SFMInheritedConfig)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert type(loaded) is SFMInheritedClassifier
    assert loaded.config.feature_pooling == BACKBONES[family][1]
    assert not loaded.training and not loaded.backbone.training
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values=pixels).logits, logits)
    # The nested backbone config comes back as the backbone's own config class.
    assert type(loaded.config.vision_config) is type(model.backbone.config)


def test_a_loaded_classifier_keeps_its_image_processor_and_saves_like_the_original(inheritance, dataset, tmp_path):
    model = inheritance.classifier()
    model.save_pretrained(tmp_path / "first")
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "first")
    assert loaded.image_processor.to_dict() == model.image_processor.to_dict()
    loaded.save_pretrained(tmp_path / "second")  # a re-saved model still works from pixels
    assert (tmp_path / "second" / "preprocessor_config.json").read_text() == (
        tmp_path / "first" / "preprocessor_config.json"
    ).read_text()
    labels = [
        r[0]["label"] for r in pipeline("image-classification", model=str(tmp_path / "second"))(dataset[:4]["image"])
    ]
    assert labels == [
        r[0]["label"] for r in pipeline("image-classification", model=str(tmp_path / "first"))(dataset[:4]["image"])
    ]
    (tmp_path / "first" / "preprocessor_config.json").unlink()
    assert AutoModelForImageClassification.from_pretrained(tmp_path / "first").image_processor is None


def test_forward_is_head_of_projector_of_backbone_feature():
    model = random_classifier("resnet")
    pixels = pixel_batch()
    with torch.no_grad():
        output = model(pixel_values=pixels, output_hidden_states=True, labels=torch.tensor([0, 1, 2, 0]))
        features = model.backbone(pixel_values=pixels).pooler_output.flatten(1)
        expected = model.classifier(model.projector(features))
    assert torch.equal(output.hidden_states[0], features)
    assert torch.allclose(output.logits, expected)
    assert torch.isclose(output.loss, nn.functional.cross_entropy(expected, torch.tensor([0, 1, 2, 0])))


def test_projector_and_head_only_artefact_loads_backbone_from_reference(tmp_path):
    model = random_classifier("vit")
    model.backbone.save_pretrained(tmp_path / "backbone")
    model.config.backbone_name_or_path = str(tmp_path / "backbone")
    model.save_pretrained(tmp_path / "full")
    model.save_pretrained(tmp_path / "light", embed_backbone=False)
    with safe_open(str(tmp_path / "light" / "model.safetensors"), framework="pt") as handle:
        assert sorted(handle.keys()) == ["classifier.bias", "classifier.weight", "projector.bias", "projector.weight"]
    light_bytes = (tmp_path / "light" / "model.safetensors").stat().st_size
    assert light_bytes < (tmp_path / "full" / "model.safetensors").stat().st_size / 5
    assert model.config.embed_backbone  # saving light does not change the live model's config
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "light")
    assert loaded.config.embed_backbone is False
    pixels = pixel_batch()
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values=pixels).logits, model(pixel_values=pixels).logits)


def test_projector_and_head_only_artefact_names_a_missing_backbone(tmp_path):
    model = random_classifier("vit")
    model.config.backbone_name_or_path = str(tmp_path / "nowhere")
    model.save_pretrained(tmp_path / "light", embed_backbone=False)
    with pytest.raises(OSError, match="nowhere"):
        AutoModelForImageClassification.from_pretrained(tmp_path / "light")


def test_light_save_without_reference_is_refused(tmp_path):
    with pytest.raises(ValueError, match="backbone_name_or_path"):
        random_classifier("vit").save_pretrained(tmp_path, embed_backbone=False)


def test_trust_remote_code_loads_bit_identical_and_pipelines_without_hf_sfm(tmp_path):
    model = random_classifier("vit")
    model.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "modeling_inherited.py").exists()
    pixels = pixel_batch()
    image = color_dataset(per_class=1)[1]["image"]
    with torch.no_grad():
        torch.save({"pixel_values": pixels, "logits": model(pixel_values=pixels).logits}, tmp_path / "reference.pt")
        image_pixels = model.image_processor(image, return_tensors="pt")["pixel_values"]
        expected_label = model.config.id2label[int(model(pixel_values=image_pixels).logits.argmax())]
    image.save(tmp_path / "image.png")
    site_packages = [path for path in site.getsitepackages() if path.endswith("site-packages")]
    script = f"""
import sys
sys.path.extend({site_packages!r})
try:
    import hf_sfm
    sys.exit("hf_sfm is importable here, so this would not test remote code")
except ImportError:
    pass
import torch
torch.set_num_threads({torch.get_num_threads()})  # the same float reductions as this process
from transformers import AutoModelForImageClassification
model = AutoModelForImageClassification.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True)
reference = torch.load({str(tmp_path / "reference.pt")!r})
with torch.no_grad():
    logits = model(pixel_values=reference["pixel_values"]).logits
from transformers import pipeline
label = pipeline("image-classification", model={str(tmp_path / "model")!r}, trust_remote_code=True)(
    {str(tmp_path / "image.png")!r}, top_k=1
)[0]["label"]
print(type(model).__module__, torch.equal(logits, reference["logits"]), label)
"""
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-S", "-c", script], cwd=tmp_path, capture_output=True, text=True, env=environment, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    module, equal, label = result.stdout.split()[-3:]
    assert module.startswith("transformers_modules.") and equal == "True"
    assert label == expected_label


def test_custom_feature_function_cannot_be_recorded():
    extractor = FeatureExtractor(tiny_vit(), PREPROCESSING, lambda model, pixels: model(pixel_values=pixels)[0][:, 1])
    with pytest.raises(ValueError, match="custom"):
        build_inherited_classifier(extractor, PREPROCESSING, nn.Linear(32, 8), nn.Linear(8, 3), ["a", "b", "c"])


def test_config_rejects_unknown_pooling():
    with pytest.raises(ValueError, match="feature_pooling"):
        SFMInheritedConfig(feature_pooling="mean")


# ---------------------------------------------------------------------------------------------------- processor


def test_image_processor_reproduces_training_preprocessing():
    rng = np.random.default_rng(0)
    grey = PIL.Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8))  # MNIST-like: mode L, square
    preprocessing = ImagePreprocessing(64, 64, (0.1, 0.2, 0.3), (0.5, 0.6, 0.7))
    mean, std = torch.tensor(preprocessing.image_mean), torch.tensor(preprocessing.image_std)
    ours = (preprocessing([grey]) - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    theirs = image_processor_for(preprocessing)(grey, return_tensors="pt")["pixel_values"]
    assert torch.allclose(ours, theirs, atol=1e-5)
    # Resize-then-crop of a non-square image: equal up to the rounding of the resized side (smooth image).
    ramp = np.linspace(0, 255, 50 * 40).reshape(40, 50).astype(np.uint8)
    wide = PIL.Image.fromarray(np.stack([ramp, ramp[::-1], ramp], axis=-1))
    preprocessing = ImagePreprocessing(32, 37, (0.5,) * 3, (0.5,) * 3)
    ours = (preprocessing([wide]) - 0.5) / 0.5
    theirs = image_processor_for(preprocessing)(wide, return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape and (ours - theirs).abs().mean() < 0.05


# ---------------------------------------------------------------------------------------------------- training


def test_linear_head_separates_separable_blobs():
    generator = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=generator) * 3
    labels = torch.arange(4).repeat_interleave(50)
    features = centers[labels] + torch.randn(200, 16, generator=generator)
    config = InheritedHeadConfig(epochs=30, learning_rate=1e-2, batch_size=32)
    head = new_linear(16, 4, config, generator, "cpu")
    losses = fit_linear(
        head, lambda index, epoch: (features[index], labels[index]), F.cross_entropy, 200, config, generator
    )
    assert accuracy(head, features, labels) > 0.97
    assert losses[-1] < 0.5 * losses[0]


def test_default_head_epochs_reach_min_steps_on_small_data_only():
    config = InheritedHeadConfig()  # batch 128, 10 reference epochs, at least 3000 steps, unscaled lr
    assert config.num_epochs(4000) == 94  # 32 steps per epoch: 10 epochs would be 320 steps
    assert config.num_epochs(1_281_167) == 10  # ImageNet-1k: 10 epochs are already ~100k steps
    assert InheritedHeadConfig(min_steps=0).num_epochs(4000) == 10
    assert InheritedHeadConfig(epochs=7).num_epochs(4000) == 7  # an explicit count is used as given
    assert config.learning_rate_for(4000) == 5e-4 and ProjectorConfig().learning_rate_for(10) == 1e-2 * 10 / 256
    labels = torch.arange(2).repeat(5)
    features = torch.randn(10, 4)
    short = InheritedHeadConfig(min_steps=50)
    generator = torch.Generator().manual_seed(0)
    head = new_linear(4, 2, short, generator, "cpu")
    losses = fit_linear(
        head, lambda index, epoch: (features[index], labels[index]), F.cross_entropy, 10, short, generator
    )
    assert len(losses) == 50  # one step per epoch at 10 examples, batch 128
    with pytest.raises(ValueError, match="min_steps"):
        InheritedHeadConfig(min_steps=-1)


def test_real_features_are_a_cached_datasets_column(distiller, inheritance, dataset):
    embedded = inheritance.real_features()
    again = inheritance.real_features()
    assert embedded._fingerprint == again._fingerprint  # same backbone, preprocessing and data → same cache key
    features, labels = features_and_labels(embedded, "label")
    assert features.shape == (len(dataset), 32)
    assert torch.equal(labels, torch.tensor(dataset["label"]))
    with torch.no_grad():
        direct = distiller.feature_extractor(distiller.preprocessing(dataset[:5]["image"]))
    assert torch.allclose(features[:5], direct, atol=1e-5)
    other = embed_dataset(FeatureExtractor(tiny_vit(seed=7), PREPROCESSING), PREPROCESSING, dataset)
    assert other._fingerprint != embedded._fingerprint  # other weights → other cache entry


def test_inherited_head_fits_the_full_real_data(inheritance):
    record = inheritance.head.record["head"]
    assert record["train_accuracy"] >= 0.95
    assert record["augment"] is False and record["epochs"] == 60


def test_the_classifier_is_assembled_only_from_parts_trained_on_purpose(distiller):
    inheritance = distiller.classifier_inheritance()
    with pytest.raises(RuntimeError, match=r"train_head\(\) and fit_projector"):
        inheritance.classifier()  # nothing is trained behind the caller's back
    standalone = ClassifierInheritance(distiller.feature_extractor, distiller.preprocessing, ["r", "g", "b"])
    with pytest.raises(ValueError, match="map-style"):
        standalone.train_head()  # built from parts without real data: says what is missing


def test_same_backbone_classifier_is_the_inherited_head(distiller, inheritance, dataset):
    projector = inheritance.projector.layer
    assert torch.equal(projector.weight, torch.eye(32)) and not projector.bias.any()
    model = inheritance.classifier()
    assert model.config.id2label == {0: "red", 1: "green", 2: "blue"}
    assert model.config.inheritance["projector"]["identity"] is True
    images = dataset[:6]["image"]
    pixels = model.image_processor(images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = inheritance.head.layer(distiller.feature_extractor(distiller.preprocessing(images)))
        assert torch.allclose(model(pixel_values=pixels).logits, expected, atol=1e-4)


def test_pipeline_returns_the_labels_of_the_model(inheritance, dataset, tmp_path):
    model = inheritance.classifier()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "preprocessor_config.json").exists()
    classifier = pipeline("image-classification", model=str(tmp_path))
    predictions = [result[0]["label"] for result in classifier(list(dataset["image"]), top_k=1)]
    names = dataset.features["label"].names
    expected = [names[i] for i in inheritance.head.layer(inheritance.real_features()[:]["features"]).argmax(1)]
    assert predictions == expected
    assert np.mean([p == names[y] for p, y in zip(predictions, dataset["label"])]) >= 0.95
    from hf_sfm.evaluation.probe import classifier_accuracy

    score = classifier_accuracy(model, dataset, batch_size=5)  # batches that do not divide the set
    assert score == pytest.approx(np.mean([p == names[y] for p, y in zip(predictions, dataset["label"])]))
    with pytest.raises(ValueError, match="empty dataset"):
        classifier_accuracy(model, dataset.select([]))
    model.image_processor = None
    with pytest.raises(ValueError, match="needs the model's image processor: pass image_processor="):
        classifier_accuracy(model, dataset)


@pytest.mark.parametrize("views", [None, 8])
def test_projector_fitted_on_distilled_images_reduces_feature_mse(distiller, views):
    eval_extractor = FeatureExtractor(tiny_resnet(), PREPROCESSING)
    images = distiller.synthetic_images()
    augmentation = Augmentation(SIZE, noise=False)
    # lr · batch / 256 = 3e-2 for the 6 images
    config = ProjectorConfig(epochs=60, learning_rate=3e-2 * 256 / len(images), seed=0, views=views)
    projector, losses = fit_projector(distiller.feature_extractor, eval_extractor, images, augmentation, config, None)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        untrained = nn.Linear(16, 32)
    # Held-out views (another seed than training): the fit generalises across augmentations of the images.
    before = projection_mse(untrained, distiller.feature_extractor, eval_extractor, images, augmentation, seed=5)
    after = projection_mse(projector, distiller.feature_extractor, eval_extractor, images, augmentation, seed=5)
    assert after < 0.5 * before
    assert losses[-1] < losses[0]


def test_view_bank_pairs_views_seen_by_both_backbones(distiller):
    eval_extractor = FeatureExtractor(tiny_resnet(), PREPROCESSING)
    images = distiller.synthetic_images()
    augmentation = Augmentation(SIZE, noise=False)
    views = ViewFeatures(
        images, [eval_extractor, distiller.feature_extractor], augmentation, torch.Generator().manual_seed(4), views=3
    )
    eval_bank, distill_bank = views.bank
    assert eval_bank.shape == (3, 6, 16) and distill_bank.shape == (3, 6, 32)
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for view in range(3):
            pixels = augmentation(images, generator)
            assert torch.allclose(eval_bank[view], eval_extractor(pixels), atol=1e-5)
            assert torch.allclose(distill_bank[view], distiller.feature_extractor(pixels), atol=1e-5)
    eval_features, distill_features = views(torch.tensor([4, 1]))  # a draw pairs the same view of each image
    chosen = [int((eval_bank[:, i] == row).all(dim=1).nonzero()) for i, row in zip([4, 1], eval_features)]
    assert torch.equal(distill_features, torch.stack([distill_bank[v, i] for v, i in zip(chosen, [4, 1])]))


def test_distiller_cross_backbone_classifier_round_trips(distiller, inheritance, tmp_path):
    cross = distiller.classifier_inheritance()
    cross.head = inheritance.head  # the same head serves every eval backbone
    cross.fit_projector(
        distiller.synthetic_images(),
        eval_model=tiny_resnet(),
        eval_image_processor=tiny_image_processor(SIZE),
        epochs=3,
    )
    model = cross.classifier()
    assert model.config.backbone_class == "ResNetModel" and model.config.eval_feature_dim == 16
    assert model.config.inheritance["projector"]["num_distilled_images"] == 6
    model.save_pretrained(tmp_path)
    pixels = pixel_batch()
    with torch.no_grad():
        loaded = AutoModelForImageClassification.from_pretrained(tmp_path)
        assert torch.equal(loaded(pixel_values=pixels).logits, model(pixel_values=pixels).logits)


def test_augmented_head_training_runs_a_fresh_view_per_epoch(distiller):
    inheritance = distiller.classifier_inheritance()
    head = inheritance.train_head(augment=True, epochs=2, batch_size=64)
    assert head.weight.shape == (3, 32)
    assert inheritance.head.record["head"]["augment"] is True


def test_kd_student_head_learns_from_the_inherited_head_alone(distiller, inheritance, dataset):
    """With alpha = 1 the labels are unused: the student can only be right by imitating the inherited head."""
    eval_extractor = FeatureExtractor(tiny_resnet(), PREPROCESSING)
    images = distiller.sample_real_images(2, seed=1, size=SIZE)
    wrong_labels = (distiller.labels + 1) % 3  # ignored when alpha = 1
    config = KDConfig(epochs=100, learning_rate=1e-2 * 256 / len(images), alpha=1.0)
    student = train_kd_head(
        distiller.feature_extractor,
        eval_extractor,
        inheritance.head.layer,
        images,
        wrong_labels,
        Augmentation(SIZE, noise=False),
        config,
        None,
    )
    assert student.weight.shape == (3, 16)
    real, labels = features_and_labels(embed_dataset(eval_extractor, PREPROCESSING, dataset))
    assert accuracy(student, real, labels) >= 0.9


def test_registration_comes_with_the_package():
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    assert CONFIG_MAPPING["hf_sfm_inherited"] is hf_sfm.SFMInheritedConfig


# ---------------------------------------------------------------------------------------------------- cost


def test_projector_and_kd_use_a_view_bank_unless_it_would_not_fit():
    assert bank_views(ProjectorConfig(), 10) == 200 and bank_views(KDConfig(), 10) == 200
    assert bank_views(ProjectorConfig(), BANK_LIMIT // 200) == 200
    assert bank_views(ProjectorConfig(), BANK_LIMIT // 200 + 1) is None  # fresh views (and the convergence stop)
    assert bank_views(ProjectorConfig(views=None), 10) is None  # the reference


def test_default_projector_matches_the_reference_fit_on_held_out_views(distiller):
    """The default (all epochs on a 200-view bank embedded once) against the reference (a fresh view per image and
    epoch), scaled down: the same held-out feature MSE within 10%; a convergence stop on fresh views ends sooner."""
    eval_extractor = FeatureExtractor(tiny_resnet(), PREPROCESSING)
    images = distiller.synthetic_images()
    augmentation = Augmentation(SIZE, noise=False)
    shared = dict(epochs=400, learning_rate=3e-2 * 256 / len(images))
    fits = {
        "reference": ProjectorConfig(**shared, views=None),
        "default": ProjectorConfig(**shared),
        "stopping": ProjectorConfig(**shared, views=None, tolerance=1e-2, patience=15),
    }
    distill, mse, epochs = distiller.feature_extractor, {}, {}
    for name, config in fits.items():
        projector, losses = fit_projector(distill, eval_extractor, images, augmentation, config, None)
        mse[name] = projection_mse(projector, distill, eval_extractor, images, augmentation, seed=9)
        epochs[name] = len(losses)
    assert epochs["reference"] == epochs["default"] == 400 and epochs["stopping"] < 400
    assert mse["default"] <= 1.1 * mse["reference"]
    assert mse["stopping"] <= 2 * mse["reference"]  # the price of stopping early: why the default does not


def test_default_head_stops_when_flat_and_keeps_the_accuracy(inheritance):
    """On the toy set the head's loss flattens well before the budget; accuracy equals the full-length fit's."""
    head = inheritance.train_head(epochs=400, learning_rate=1e-2, batch_size=16, tolerance=1e-2, patience=10)
    stopped = inheritance.head.record["head"]
    full_head = inheritance.train_head(epochs=400, learning_rate=1e-2, batch_size=16, tolerance=None)
    full = inheritance.head.record["head"]
    assert full["epochs"] == 400 and stopped["epochs"] < 400
    assert stopped["train_accuracy"] >= full["train_accuracy"] - 0.03
    assert head is not full_head
