"""Library versions recorded in every output, so a result can be traced to the code that made it."""

from __future__ import annotations

import importlib.metadata
import json

_PACKAGES = ("hf_sfm", "torch", "transformers", "datasets", "accelerate", "huggingface_hub", "safetensors")


def library_versions() -> dict[str, str]:
    versions = {}
    for package in _PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def provenance_metadata(seed: int | None) -> dict[str, str]:
    """`provenance` as the string-to-string metadata of a safetensors file."""
    return {"seed": json.dumps(seed), "versions": json.dumps(library_versions(), sort_keys=True)}
