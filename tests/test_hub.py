"""Hub round trips against a real HTTP endpoint: push → load_dataset / from_pretrained → same images, labels, logits.

The Hub cannot be reached from here, so `tests/hub_server.py` serves the Hub's routes on localhost. The push runs in
this process (huggingface_hub's endpoint, offline and Xet switches are patched for the duration of a test); the
loads run in a fresh subprocess with `HF_ENDPOINT` set, exactly as a user on another machine would load them.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from conftest import IMAGE_SIZE, make_distiller, tiny_image_processor
from hub_server import TEST_TOKEN, FakeHub
from huggingface_hub import DatasetCard, HfApi, ModelCard, constants
from huggingface_hub.errors import RepositoryNotFoundError
from transformers import AutoModelForImageClassification

from hf_sfm.evaluation.results import MetricsError, inherited_row, result_rows
from hf_sfm.publishing import cards as hf_cards
from hf_sfm.publishing.cards import CardMetadataError
from hf_sfm.publishing.export import save_classifier
from hf_sfm.publishing.hub import HubPushError, push_distilled, push_folder
from hf_sfm.publishing.visualization import to_pil_images

DATASET_REPO = "org/toy-sfm-ipc2"
CLASSIFIER_REPO = "org/toy-sfm-ipc2-classifier"
# What Distiller.evaluate() returns, plus the inherited classifier's score (hf_sfm.evaluation.results schema).
METRICS = {
    "eval_backbone": "tiny-vit",
    "eval_runs": 5,
    "eval_num_test_images": 30,
    "eval_accuracy": 0.91,
    "eval_accuracy_std": 0.01,
    "eval_random_real_accuracy": 0.52,
    "eval_random_real_accuracy_std": 0.03,
    "eval_centroids_accuracy": 0.75,
    "eval_centroids_accuracy_std": 0.0,
    "eval_full_dataset_accuracy": 0.97,
    "eval_full_dataset_accuracy_std": 0.002,
    "eval_inherited_accuracy": 0.88,
    "eval_inherited_backbone": "ViTModel",
}
DATASET_FILES = {
    ".gitattributes",
    "README.md",
    "data/train-00000-of-00001.parquet",
    "dataset_dict.json",
    "distillation_config.json",
    "grid.png",
    "statistics.safetensors",
    "synthetic.safetensors",
    "train/data-00000-of-00001.arrow",
    "train/dataset_info.json",
    "train/state.json",
}
CLASSIFIER_FILES = {
    ".gitattributes",
    "README.md",
    "config.json",
    "model.safetensors",
    "modeling_inherited.py",
    "preprocessor_config.json",
}


# ---------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def fake_hub():
    with FakeHub() as server:
        yield server


def _point_hub_client_at(patch: pytest.MonkeyPatch, endpoint: str, token: str | None = TEST_TOKEN) -> None:
    """What `HF_ENDPOINT=... HF_HUB_DISABLE_XET=1 HF_TOKEN=...` does for a fresh process, for this one."""
    patch.setattr(constants, "ENDPOINT", endpoint)
    patch.setattr(constants, "HF_HUB_OFFLINE", False)
    patch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    if token is None:
        patch.delenv("HF_TOKEN", raising=False)
        patch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    else:
        patch.setenv("HF_TOKEN", token)


@pytest.fixture
def hub_client(fake_hub, monkeypatch):
    _point_hub_client_at(monkeypatch, fake_hub.endpoint)
    return fake_hub


# The pushed run's Distiller: the tiny ViT on the colour dataset, three steps at ipc 2.
_distiller = functools.partial(
    make_distiller, num_steps=3, ipc=2, image_size=IMAGE_SIZE, save_grid=False, logging_steps=0
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    distiller = _distiller(tmp_path_factory.mktemp("run"))
    distiller.train()
    return distiller


@pytest.fixture(scope="module")
def loader(fake_hub, tmp_path_factory):
    """The fresh process that loads the pushed repos back, started before the run: its imports overlap the run and
    the push, and it reads nothing from the endpoint before `pushed` tells it to (the file `go`)."""
    out = tmp_path_factory.mktemp("loader")
    (out / "loader.py").write_text(LOADER)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGING"))}
    env.update(
        HF_ENDPOINT=fake_hub.endpoint,
        HF_HUB_DISABLE_XET="1",
        HF_TOKEN=TEST_TOKEN,
        HF_HOME=str(out / "hf_home"),
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    command = [sys.executable, str(out / "loader.py"), str(out), DATASET_REPO, CLASSIFIER_REPO]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield process, out
    if process.poll() is None:  # `pushed` never told it to go
        process.kill()
        process.communicate()


@pytest.fixture(scope="module")
def pushed(loader, trained, fake_hub, tmp_path_factory):
    """One `Distiller.push_to_hub` of both repos, then a fresh process that loads them back from the endpoint."""
    local_dir = tmp_path_factory.mktemp("hub_folders")
    with pytest.MonkeyPatch.context() as patch:
        _point_hub_client_at(patch, fake_hub.endpoint)
        inheritance = trained.classifier_inheritance()
        inheritance.train_head()
        inheritance.fit_projector(trained.synthetic_images())
        classifier = inheritance.classifier()
        commits = trained.push_to_hub(
            dataset_repo_id=DATASET_REPO,
            classifier_repo_id=CLASSIFIER_REPO,
            metrics=METRICS,
            classifier=classifier,
            local_dir=local_dir,
            source_dataset="org/toy",
            license="cc-by-4.0",
        )
    torch.manual_seed(0)
    pixel_values = torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        logits = classifier(pixel_values=pixel_values).logits
    loaded = _load_in_fresh_process(loader, pixel_values)
    return {
        "commits": commits,
        "dataset_dir": local_dir / DATASET_REPO.split("/")[1],
        "classifier_dir": local_dir / CLASSIFIER_REPO.split("/")[1],
        "classifier": classifier,
        "pixel_values": pixel_values,
        "logits": logits,
        "loaded": loaded,
    }


LOADER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import numpy as np, torch
    import datasets
    from huggingface_hub import snapshot_download
    from transformers import AutoModelForImageClassification, pipeline

    out, dataset_repo, classifier_repo = sys.argv[1:4]
    deadline = time.monotonic() + 240
    while not Path(out, "go").exists():  # the repos are pushed (imports done meanwhile)
        assert time.monotonic() < deadline, "never told to go"
        time.sleep(0.02)
    pixel_values = torch.from_numpy(np.load(f"{out}/pixel_values.npy"))
    distilled = datasets.load_dataset(dataset_repo, split="train")
    np.save(f"{out}/images.npy", np.stack([np.asarray(image) for image in distilled["image"]]))
    snapshot = snapshot_download(dataset_repo, repo_type="dataset")  # the whole repo: load_from_disk works on it
    from_disk = datasets.load_from_disk(snapshot)["train"]
    # Without importing hf_sfm: the model code comes from the repo (trust_remote_code), as for a user without it.
    remote = AutoModelForImageClassification.from_pretrained(classifier_repo, trust_remote_code=True)
    np.save(f"{out}/logits_remote_code.npy", remote(pixel_values=pixel_values).logits.detach().numpy())
    import hf_sfm  # noqa: F401  registers the model type with the Auto classes
    model = AutoModelForImageClassification.from_pretrained(classifier_repo)
    np.save(f"{out}/logits.npy", model(pixel_values=pixel_values).logits.detach().numpy())
    predictions = pipeline("image-classification", model=classifier_repo)(distilled[0]["image"], top_k=2)
    json.dump(
        {
            "labels": [int(label) for label in distilled["label"]],
            "class_names": distilled.features["label"].names,
            "features": str(distilled.features),
            "model_class": type(model).__name__,
            "remote_class_module": type(remote).__module__,
            "pipeline_labels": [prediction["label"] for prediction in predictions],
            "snapshot_labels": [int(label) for label in from_disk["label"]],
        },
        open(f"{out}/meta.json", "w"),
    )
    """
)


def _load_in_fresh_process(loader, pixel_values: torch.Tensor) -> dict:
    process, out = loader
    np.save(out / "pixel_values.npy", pixel_values.numpy())
    (out / "go").touch()
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 0, stderr[-4000:]
    meta = json.loads((out / "meta.json").read_text())
    return {
        **meta,
        "images": np.load(out / "images.npy"),
        "logits": np.load(out / "logits.npy"),
        "logits_remote_code": np.load(out / "logits_remote_code.npy"),
    }


# ---------------------------------------------------------------------------------------------------- round trips


def test_push_then_load_dataset_from_hub_gives_same_images_and_labels(pushed, trained):
    expected = np.stack([np.asarray(image) for image in to_pil_images(trained.synthetic_images())])
    loaded = pushed["loaded"]
    np.testing.assert_array_equal(loaded["images"], expected)
    assert loaded["labels"] == trained.labels.tolist()
    assert loaded["class_names"] == trained.class_names
    assert loaded["snapshot_labels"] == trained.labels.tolist()  # snapshot_download + load_from_disk
    assert "ClassLabel" in loaded["features"] and "Image" in loaded["features"]


def test_push_then_from_pretrained_from_hub_gives_same_logits(pushed):
    loaded = pushed["loaded"]
    assert loaded["model_class"] == "SFMInheritedClassifier"
    np.testing.assert_allclose(loaded["logits"], pushed["logits"].numpy(), rtol=0, atol=1e-6)
    # The model code pushed with the weights works for users without hf_sfm installed.
    assert loaded["remote_class_module"].startswith("transformers_modules")
    np.testing.assert_allclose(loaded["logits_remote_code"], pushed["logits"].numpy(), rtol=0, atol=1e-6)
    # The card's `pipeline("image-classification", model=repo)` works and speaks the class names.
    assert len(loaded["pipeline_labels"]) == 2
    assert set(loaded["pipeline_labels"]) <= set(pushed["classifier"].config.id2label.values())


def test_each_repo_receives_exactly_the_local_folder_in_one_commit(pushed, fake_hub):
    for repo_id, repo_type, folder, expected in (
        (DATASET_REPO, "dataset", pushed["dataset_dir"], DATASET_FILES),
        (CLASSIFIER_REPO, "model", pushed["classifier_dir"], CLASSIFIER_FILES),
    ):
        remote = fake_hub.files(repo_id, repo_type)
        assert set(remote) == expected
        local = {path: (folder / path).read_bytes() for path in expected - {".gitattributes"}}
        assert {path: remote[path] for path in local} == local
        commits = fake_hub.commits(repo_id, repo_type)
        assert [commit.title for commit in commits[1:]] == ["initial commit"]  # the push is one commit
        assert commits[0].title.startswith("Upload")
    assert pushed["commits"]["dataset"].oid == fake_hub.commits(DATASET_REPO, "dataset")[0].oid
    assert pushed["commits"]["classifier"].oid == fake_hub.commits(CLASSIFIER_REPO, "model")[0].oid
    uploaded_by_lfs = {
        path for path, stored in fake_hub.repo(DATASET_REPO, "dataset").resolve("main").files.items() if stored.lfs
    }
    assert {"data/train-00000-of-00001.parquet", "synthetic.safetensors", "grid.png"} <= uploaded_by_lfs


def test_local_folders_load_like_the_hub_versions(pushed, trained):
    local = datasets.load_dataset(str(pushed["dataset_dir"]), split="train")
    np.testing.assert_array_equal(np.stack([np.asarray(image) for image in local["image"]]), pushed["loaded"]["images"])
    assert list(local["label"]) == pushed["loaded"]["labels"]
    on_disk = datasets.load_from_disk(str(pushed["dataset_dir"]))["train"]
    assert list(on_disk["label"]) == trained.labels.tolist()
    model = AutoModelForImageClassification.from_pretrained(pushed["classifier_dir"])
    with torch.no_grad():
        logits = model(pixel_values=pushed["pixel_values"]).logits
    np.testing.assert_allclose(logits.numpy(), pushed["loaded"]["logits"], rtol=0, atol=1e-6)


def test_cards_parse_with_hub_loaders_and_carry_the_metadata(pushed, trained):
    dataset_card = DatasetCard.load(pushed["dataset_dir"] / "README.md")
    data = dataset_card.data.to_dict()
    assert data["task_categories"] == ["image-classification"]
    assert data["size_categories"] == ["n<1K"]
    assert data["source_datasets"] == ["org/toy"]
    assert data["license"] == "cc-by-4.0"
    assert "dataset-distillation" in data["tags"]
    assert data["configs"][0]["data_files"][0]["path"] == "data/train-*"
    names = data["dataset_info"]["features"][1]["dtype"]["class_label"]["names"]
    assert [names[str(i)] for i in range(len(names))] == trained.class_names
    assert data["dataset_info"]["splits"][0]["num_examples"] == len(trained.labels)
    assert "91.00 ± 1.00" in dataset_card.text and "Full real dataset (upper bound)" in dataset_card.text
    assert "method: sfm" in dataset_card.text and "2602.05391" in dataset_card.text

    model_card = ModelCard.load(pushed["classifier_dir"] / "README.md")
    assert model_card.data.library_name == "transformers"
    assert model_card.data.pipeline_tag == "image-classification"
    assert model_card.data.datasets == [DATASET_REPO, "org/toy"]
    assert model_card.data.base_model is None  # a random backbone has no Hub id to link (its class is not one)
    (result,) = model_card.data.eval_results
    assert (result.task_type, result.dataset_type, result.dataset_split) == ("image-classification", "org/toy", "test")
    assert (result.metric_type, result.metric_value) == ("accuracy", 0.88)
    assert "ViTModel" in result.metric_name  # the eval backbone is named
    assert model_card.data.model_name == CLASSIFIER_REPO.split("/")[1]
    assert f"/datasets/{DATASET_REPO}/resolve/main/grid.png" in model_card.text
    for card, repo_type in ((dataset_card, "dataset"), (model_card, "model")):
        hf_cards.validate_card_metadata(card, repo_type)


# ---------------------------------------------------------------------------------------------------- push options


def _tiny_folder(
    path: Path,
    readme: str = "---\nlicense: mit\nlibrary_name: transformers\npipeline_tag: "
    "image-classification\ntags:\n- test\n---\n# tiny\n",
) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "README.md").write_text(readme)
    (path / "weights.safetensors").write_bytes(os.urandom(256))
    (path / ".cache").mkdir(exist_ok=True)
    (path / ".cache" / "leftover").write_text("never pushed")
    return path


def test_private_revision_create_pr_and_commit_message(hub_client, tmp_path):
    folder = _tiny_folder(tmp_path / "tiny")
    push_folder(folder, "org/private-one", repo_type="model", private=True, commit_message="first version")
    assert hub_client.repo("org/private-one").private
    assert hub_client.commits("org/private-one")[0].title == "first version"
    assert set(hub_client.files("org/private-one")) == {".gitattributes", "README.md", "weights.safetensors"}
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub_client.endpoint).model_info("org/private-one", token=False)

    (folder / "weights.safetensors").write_bytes(b"\1" * 300)
    push_folder(folder, "org/private-one", repo_type="model", revision="dev")
    assert hub_client.files("org/private-one", revision="dev")["weights.safetensors"] == b"\1" * 300
    assert hub_client.files("org/private-one")["weights.safetensors"] != b"\1" * 300  # main untouched

    (folder / "weights.safetensors").write_bytes(b"\2" * 300)
    commit = push_folder(folder, "org/private-one", repo_type="model", create_pr=True)
    assert commit.pr_url is not None and commit.pr_url.endswith("/discussions/1")
    assert hub_client.files("org/private-one", revision="refs/pr/1")["weights.safetensors"] == b"\2" * 300
    assert hub_client.files("org/private-one")["weights.safetensors"] not in (b"\1" * 300, b"\2" * 300)
    with pytest.raises(ValueError, match="create_pr"):
        push_folder(folder, "org/private-one", repo_type="model", create_pr=True, revision="dev")


def test_repush_removes_stale_data_shards_in_the_same_commit(hub_client, pushed, tmp_path):
    repo = "org/repush"
    push_distilled(pushed["dataset_dir"], repo)
    HfApi().upload_file(
        path_or_fileobj=b"old shard",
        path_in_repo="data/train-00001-of-00002.parquet",
        repo_id=repo,
        repo_type="dataset",
    )
    before = len(hub_client.commits(repo, "dataset"))
    push_distilled(pushed["dataset_dir"], repo, commit_message="re-push")
    assert "data/train-00001-of-00002.parquet" not in hub_client.files(repo, "dataset")
    assert set(hub_client.files(repo, "dataset")) == DATASET_FILES
    assert len(hub_client.commits(repo, "dataset")) == before + 1


# ---------------------------------------------------------------------------------------------------- faults


def test_push_without_token_is_a_clear_error_and_retryable(fake_hub, trained, monkeypatch, tmp_path):
    _point_hub_client_at(monkeypatch, fake_hub.endpoint, token=None)
    with pytest.raises(HubPushError, match="No Hugging Face token") as caught:
        trained.push_to_hub(dataset_repo_id="org/needs-token", local_dir=tmp_path)
    folder = caught.value.folder
    assert folder == tmp_path / "needs-token" and (folder / "data/train-00000-of-00001.parquet").is_file()
    assert ("dataset", "org/needs-token") not in fake_hub.repos  # nothing was sent
    push_distilled(folder, "org/needs-token", token=TEST_TOKEN)  # the retry needs no new distillation
    assert set(fake_hub.files("org/needs-token", "dataset")) == DATASET_FILES


def test_push_with_a_rejected_token_names_the_namespace(hub_client, tmp_path):
    with pytest.raises(HubPushError, match=r"refused the token.*'org' namespace"):
        push_folder(_tiny_folder(tmp_path / "t"), "org/bad-token", repo_type="model", token="hf_wrong")


def test_network_error_keeps_the_folder_and_the_push_can_be_retried(hub_client, trained, monkeypatch, tmp_path):
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        dead_endpoint = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", dead_endpoint)
    with pytest.raises(HubPushError, match="Could not reach the Hub") as caught:
        trained.push_to_hub(dataset_repo_id="org/flaky", local_dir=tmp_path)
    assert "push_distilled(" in str(caught.value) and (caught.value.folder / "README.md").is_file()
    monkeypatch.setattr(constants, "ENDPOINT", hub_client.endpoint)
    push_distilled(caught.value.folder, "org/flaky")
    assert set(hub_client.files("org/flaky", "dataset")) == DATASET_FILES


def test_server_failure_at_commit_leaves_the_repo_unchanged_and_retry_succeeds(hub_client, pushed):
    repo = "org/commit-fails"
    hub_client.fail("POST", r"/commit/", status=500)
    with pytest.raises(HubPushError, match="HTTP 500"):
        push_distilled(pushed["dataset_dir"], repo)
    assert set(hub_client.files(repo, "dataset")) == {".gitattributes"}
    push_distilled(pushed["dataset_dir"], repo)
    assert set(hub_client.files(repo, "dataset")) == DATASET_FILES


def test_offline_mode_is_a_clear_error(hub_client, monkeypatch, tmp_path):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubPushError, match="HF_HUB_OFFLINE"):
        push_folder(_tiny_folder(tmp_path / "t"), "org/offline", repo_type="model")


@pytest.mark.parametrize("repo_id", ["no-namespace", "org/a/b", "org/has space", "", "org/..x", "org/a--b", "/name"])
def test_repo_id_of_the_wrong_form_is_refused_before_any_work(trained, hub_client, tmp_path, repo_id):
    requests_before = len(hub_client.requests)
    with pytest.raises(ValueError, match="namespace/name"):
        trained.push_to_hub(dataset_repo_id=repo_id, local_dir=tmp_path / "out")
    with pytest.raises(ValueError, match="namespace/name"):
        trained.push_to_hub(dataset_repo_id=DATASET_REPO, classifier_repo_id=repo_id, local_dir=tmp_path / "out")
    with pytest.raises(ValueError, match="namespace/name"):
        push_folder(_tiny_folder(tmp_path / "t"), repo_id, repo_type="model")
    assert not (tmp_path / "out").exists()
    assert len(hub_client.requests) == requests_before


def test_push_before_train_is_refused(hub_client, tmp_path):
    distiller = _distiller(tmp_path)
    with pytest.raises(RuntimeError, match=r"call `train\(\)`"):
        distiller.push_to_hub(dataset_repo_id="org/untrained", local_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_invalid_card_metadata_is_refused_before_upload(hub_client, trained, pushed, tmp_path):
    with pytest.raises(CardMetadataError, match=r"license='Apache 2.0'.*apache-2.0"):
        trained.save_distilled(tmp_path / "bad_license", license="Apache 2.0")
    assert not (tmp_path / "bad_license").exists()  # atomic: no half-written folder
    with pytest.raises(MetricsError, match="finite fraction"):
        trained.save_distilled(tmp_path / "nan", metrics={"eval_backbone": "x", "eval_accuracy": math.nan})
    with pytest.raises(CardMetadataError, match="size_categories"):
        hf_cards.validate_card_metadata(
            "---\nlicense: mit\ntask_categories: [image-classification]\nsize_categories: [tiny]\n"
            "configs: [x]\ntags: [a]\n---\n",
            "dataset",
        )
    requests_before = len(hub_client.requests)
    for readme, message in (
        ("---\nlicense: mit\ntags: [a\n---\n", "does not parse"),
        ("# no metadata\n", "no YAML metadata"),
        (
            "---\nlicense: mit\nlibrary_name: transformers\npipeline_tag: x\ntags: [t]\nbase_model: /tmp/local\n---\n",
            "base_model",
        ),
    ):
        with pytest.raises(CardMetadataError, match=message):
            push_folder(_tiny_folder(tmp_path / "card", readme), "org/bad-card", repo_type="model")
    assert len(hub_client.requests) == requests_before


def test_save_classifier_needs_an_image_processor(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification

    model = ViTForImageClassification(
        ViTConfig(
            image_size=IMAGE_SIZE,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=3,
        )
    )
    with pytest.raises(ValueError, match="image processor"):
        save_classifier(tmp_path / "clf", model)
    # Any PreTrainedModel: no model-index, and the card says so.
    path = save_classifier(tmp_path / "clf", model, tiny_image_processor())
    card = ModelCard.load(path / "README.md")
    assert card.data.eval_results is None and "Not evaluated" in card.text


# ---------------------------------------------------------------------------------------------------- results


def test_result_rows_read_the_metrics_that_evaluate_returns():
    cross = {"eval_lite2_backbone": "lite2", "eval_lite2_runs": 3, "eval_lite2_accuracy": 0.4}
    rows = result_rows([METRICS, cross])
    assert [(row.training_set, row.eval_backbone, row.accuracy, row.runs) for row in rows] == [
        ("distilled", "tiny-vit", 0.91, 5),
        ("full_dataset", "tiny-vit", 0.97, 5),
        ("random_real", "tiny-vit", 0.52, 5),
        ("centroids", "tiny-vit", 0.75, 5),
        ("inherited", "ViTModel", 0.88, 1),
        ("distilled", "lite2", 0.4, 3),
    ]
    assert rows[0].accuracy_text == "91.00 ± 1.00" and rows[4].protocol == "classifier inheritance"
    assert inherited_row(METRICS).accuracy == 0.88 and inherited_row(cross) is None
    with pytest.raises(MetricsError, match="_backbone"):
        result_rows({"sfm": {"accuracy": 0.5}})  # a free-form dict is refused, not guessed at
    with pytest.raises(MetricsError, match="fraction"):
        result_rows({"eval_backbone": "x", "eval_accuracy": 91.5})  # a percentage is not silently rescaled


def test_model_card_links_base_model_only_for_a_hub_id(pushed, tmp_path):
    config = copy.deepcopy(pushed["classifier"].config)
    for reference, expected in (("google/vit-base-patch16-224", "google/vit-base-patch16-224"), (str(tmp_path), None)):
        config.backbone_name_or_path = reference
        card = hf_cards.model_card(model=SimpleNamespace(config=config), metrics=METRICS, source_dataset="org/toy")
        assert card.data.base_model == expected
        named = reference if expected else f"{tmp_path.name} (a local checkpoint)"  # a local path stays private
        assert f"`{named}`" in card.text and str(tmp_path) not in card.text  # the backbone is named either way
