"""Hub pushes: publish a distilled set and its inherited classifier, so others can

    load_dataset("org/imagenet-sfm-ipc1")
    AutoModelForImageClassification.from_pretrained("org/imagenet-sfm-ipc1-classifier")

Local layout first, push second: `export.save_distilled` and `export.save_classifier` write exactly the files a
repo receives, and `push_folder` uploads such a folder in ONE commit (`create_commit`, not `upload_folder`, whose
Xet pipeline may split large folders into several commits). A failed push (no token, no network, offline mode)
raises `HubPushError` naming the folder, which stays on disk: calling `push_distilled` / `push_classifier` on it
again retries without redoing any work. A card's metadata is validated (`cards.validate_card_metadata`) before
anything is uploaded.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .cards import validate_card_metadata

REPO_ID_PATTERN = re.compile(r"^(?=.{3,96}$)[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
# Never pushed: dot-files (e.g. `.cache/` that `snapshot_download(local_dir=...)` leaves) and staging leftovers.
PUSH_IGNORE_PATTERNS = (".*", "*/.*", "*.tmp", "*/*.tmp")
# Remote files a new push replaces: stale data shards or weight shards of an earlier push would otherwise survive
# (and `data/train-*` would load them together with the new ones).
DATASET_DELETE_PATTERNS = ("data/*", "train/*", "*.safetensors")
MODEL_DELETE_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.py")


class HubPushError(RuntimeError):
    """A push did not complete. The local folder is intact; fix the cause and call the push again on it."""

    def __init__(self, message: str, folder: Path | None = None):
        super().__init__(message)
        self.folder = folder


def check_repo_id(repo_id: str) -> str:
    """`"namespace/name"`, the form every push here needs (a bare name would land in an unexpected namespace)."""
    if not isinstance(repo_id, str) or not REPO_ID_PATTERN.match(repo_id) or ".." in repo_id or "--" in repo_id:
        raise ValueError(
            f"repo_id={repo_id!r} is not a Hub repo id: use 'namespace/name' (your user or organisation, a slash, "
            "then letters, digits, '-', '_' or '.'; 96 characters at most; no '..' or '--'), "
            "e.g. 'my-org/imagenet-sfm-ipc1'."
        )
    return repo_id


def folder_files(folder: str | Path) -> list[str]:
    """The repo-relative paths a push of `folder` sends (POSIX separators, dot-files and temporaries excluded)."""
    folder = Path(folder)
    paths = [path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()]
    return sorted(p for p in paths if not any(fnmatch.fnmatch(p, pattern) for pattern in PUSH_IGNORE_PATTERNS))


# ---------------------------------------------------------------------------------------------------- pushes


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    repo_type: str,
    private: bool = False,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    create_pr: bool = False,
    delete_patterns: Iterable[str] = (),
    endpoint: str | None = None,
):
    """Upload `folder` to `repo_id` in one commit; returns the `CommitInfo` (`.pr_url` set with `create_pr`).

    Creates the repo (`private` only applies to a new repo) and, with `revision`, the branch. Remote files matching
    `delete_patterns` that the folder no longer has are deleted in the same commit. Errors that a retry can fix
    (no token, offline mode, network, authorisation) raise `HubPushError`; the folder is left as it is.
    """
    import httpx2
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    check_repo_id(repo_id)
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Nothing to push: {folder} is not a folder.")
    if create_pr and revision not in (None, "main"):
        raise ValueError(
            f"create_pr=True opens a pull request against the default branch; revision={revision!r} cannot be "
            "combined with it. Push to the branch (revision=...) or open a PR (create_pr=True), not both."
        )
    files = folder_files(folder)
    if "README.md" in files:
        validate_card_metadata((folder / "README.md").read_text(encoding="utf-8"), repo_type)
    again = {"dataset": "push_distilled", "model": "push_classifier"}.get(repo_type, "push_folder")
    retry = (
        f"The files are kept in {folder}; push them again with "
        f"hf_sfm.publishing.hub.{again}({str(folder)!r}, {repo_id!r})."
    )
    if not (token or get_token()):
        raise HubPushError(
            f"No Hugging Face token: pushing to {repo_id!r} needs one with write access. Run `hf auth login`, set "
            f"HF_TOKEN, or pass token=. {retry}",
            folder,
        )
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        if revision is not None and not create_pr:
            api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
        target = revision if not create_pr else None
        operations: list = []
        if delete_patterns:
            remote = api.list_repo_files(repo_id, repo_type=repo_type, revision=target)
            stale = [
                path
                for path in remote
                if path not in files and any(fnmatch.fnmatch(path, pattern) for pattern in delete_patterns)
            ]
            operations += [CommitOperationDelete(path_in_repo=path) for path in stale]
        operations += [CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(folder / path)) for path in files]
        return api.create_commit(
            repo_id,
            operations,
            commit_message=commit_message or f"Upload {repo_type} with hf_sfm",
            commit_description=commit_description,
            repo_type=repo_type,
            revision=target,
            create_pr=create_pr,
        )
    except OfflineModeIsEnabled as error:
        raise HubPushError(f"Offline mode is on (HF_HUB_OFFLINE=1): unset it to push. {retry}", folder) from error
    except httpx2.TransportError as error:
        raise HubPushError(
            f"Could not reach the Hub at {api.endpoint} ({type(error).__name__}: {error}). Check the network "
            f"(or HF_ENDPOINT). {retry}",
            folder,
        ) from error
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", None)
        if status in (401, 403):
            raise HubPushError(
                f"The Hub refused the token for {repo_id!r} (HTTP {status}): it needs write access to the "
                f"'{repo_id.split('/')[0]}' namespace. Use another token (`hf auth login`) or namespace. {retry}",
                folder,
            ) from error
        if status is not None and status >= 500:
            raise HubPushError(
                f"The Hub failed with HTTP {status}: {error}. Try again later. {retry}", folder
            ) from error
        raise


def push_distilled(folder: str | Path, repo_id: str, **kwargs: Any):
    """Push a `save_distilled` folder as a dataset repo (one commit; stale data shards removed)."""
    kwargs["delete_patterns"] = kwargs.get("delete_patterns") or DATASET_DELETE_PATTERNS
    kwargs["commit_message"] = kwargs.get("commit_message") or "Upload distilled dataset with hf_sfm"
    return push_folder(folder, repo_id, repo_type="dataset", **kwargs)


def push_classifier(folder: str | Path, repo_id: str, **kwargs: Any):
    """Push a `save_classifier` folder as a model repo (one commit; stale weight shards removed)."""
    kwargs["delete_patterns"] = kwargs.get("delete_patterns") or MODEL_DELETE_PATTERNS
    kwargs["commit_message"] = kwargs.get("commit_message") or "Upload inherited classifier with hf_sfm"
    return push_folder(folder, repo_id, repo_type="model", **kwargs)
