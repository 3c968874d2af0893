"""Library versions recorded in every output, so a result can be traced to the code that made it."""

from __future__ import annotations

import importlib.metadata
import json
from typing import Any

_PACKAGES = ("hf_sfm", "torch", "transformers", "datasets", "accelerate", "huggingface_hub", "safetensors")


def library_versions() -> dict[str, str]:
    versions = {}
    for package in _PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def provenance(seed: int | None) -> dict[str, Any]:
    """`{"seed": ..., "versions": {...}}`: what every output records so that it can be reproduced."""
    return {"seed": seed, "versions": library_versions()}


def provenance_metadata(seed: int | None) -> dict[str, str]:
    """`provenance` as the string-to-string metadata of a safetensors file."""
    return {"seed": json.dumps(seed), "versions": json.dumps(library_versions(), sort_keys=True)}
