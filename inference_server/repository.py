"""A versioned model repository on disk (Triton's layout)::

    <repo>/<model>/<version>/     one artifact directory per version (manifest.json, model.onnx, ...)
    <repo>/<model>/.publish-*     a version being copied in; never read

Versions are positive integers; a directory whose name is not one is ignored. `publish` copies
an artifact into a hidden sibling directory, flushes it, then renames it to the next free
version number, so a reader sees a version either complete or not at all; two publishers racing
for one number both succeed, one of them with the next number. What a server does with the
versions: inference_server/model_repository.py.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from recsys.artifact import fsync_dir, read_manifest, verify_files
from recsys.errors import InvalidArgument

if TYPE_CHECKING:
    from inference_server.pipeline import Recommender

__all__ = ["ModelRepository", "ServedModel"]

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class ModelRepository:
    """`<root>/<model>/<version>/` artifact directories (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, model: str, version: int) -> Path:
        return self.root / _check_name(model) / str(version)

    def versions(self, model: str) -> list[int]:
        """The model's version numbers, ascending; [] when it has none (or does not exist)."""
        directory = self.root / _check_name(model)
        if not directory.is_dir():
            return []
        return sorted(
            int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit() and not p.name.startswith("0")
        )

    def latest(self, model: str) -> int | None:
        versions = self.versions(model)
        return versions[-1] if versions else None

    def publish(self, artifact_dir: str | Path, model: str | None = None) -> int:
        """Copies a checked artifact in as the model's next version; returns its number.

        `model` defaults to the artifact's model kind (e.g. "sasrec"). Raises
        `FailedPrecondition` for a directory that is not a complete artifact.
        """
        manifest = read_manifest(artifact_dir)
        verify_files(artifact_dir, manifest)
        model_dir = self.root / _check_name(model or manifest.model_kind)
        model_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".publish-", dir=model_dir))
        try:
            shutil.copytree(artifact_dir, tmp, dirs_exist_ok=True)
            for child in tmp.rglob("*"):
                if child.is_file():
                    with open(child, "rb") as f:
                        os.fsync(f.fileno())
            fsync_dir(tmp)
            for attempt in itertools.count():
                version = (self.latest(model_dir.name) or 0) + 1
                try:
                    os.rename(tmp, model_dir / str(version))  # fails if another publisher took it
                    break
                except OSError:
                    if attempt >= 100 or not (model_dir / str(version)).exists():
                        raise
            fsync_dir(model_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return version


def _check_name(model: str) -> str:
    if not _MODEL_NAME.match(model or ""):
        raise InvalidArgument(f"model name {model!r}: use letters, digits, '_', '.', '-' (at most 128)")
    return model


@dataclass(frozen=True)
class ServedModel:
    """A version as a server serves it: its Recommender, where it came from, what answers name."""

    recommender: Recommender | None  # None: nothing served yet (an empty repository, waiting)
    path: Path
    version: int | None  # repository version; None for a plain artifact directory
    label: str  # what every response names: "<model>/<version>:<model_version>" from a repository
    loaded_at: float = field(default_factory=time.time)
