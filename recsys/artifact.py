"""The model artifact: a directory that describes itself, written atomically.

    <artifact>/
      model.onnx        the model; its metadata_props carry the manifest JSON too
      manifest.json     Manifest below: kind, inputs and where each comes from, schema + hash,
                        item index checksum, training config, metrics, versions, file checksums
      item_index.json   {"item_ids": [...], "titles": [...], "popularity": [...]}, column order
                        of the model's `scores` output
      histories.jsonl   {"user_id", "item_ids", "timestamps"[, "events"]} per user, oldest event
                        first; "events": each event's kind ("" for none), for data with kinds
      users.jsonl       {"user_id", "features": {name: value}} raw user features
      items.jsonl       {"item_id", "features": {name: value}} raw item features
      user_index.json   {"user_ids": [...]}, only for a model with a user.id input: the user id
                        token is the position + 2 (1 = a user unseen in training)

Servers read only this directory; they never see the trainer's config or data.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recsys.errors import FailedPrecondition
from recsys.schema import FIRST_TOKEN, FeatureContract, FeatureSchema, canonical_json, sha256_hex

__all__ = [
    "FORMAT_VERSION",
    "ChecksumError",
    "ItemIndex",
    "Manifest",
    "ModelInput",
    "file_sha256",
    "fsync_dir",
    "read_jsonl",
    "read_manifest",
    "read_user_index",
    "write_atomically",
    "write_jsonl",
]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL = "model.onnx"
ITEM_INDEX = "item_index.json"
HISTORIES = "histories.jsonl"
USERS = "users.jsonl"
ITEMS = "items.jsonl"
USER_INDEX = "user_index.json"  # only for models with a user.id input

# Where a model input's values come from at serving time.
SOURCE_USER_HISTORY = "user.history"  # item tokens of the user's most recent events, left-padded
# Event-kind tokens of the same events, aligned with SOURCE_USER_HISTORY (same left padding):
# kind `training["events"][i]` is token i + FIRST_TOKEN, any other kind (or none) OOV.
SOURCE_USER_HISTORY_EVENTS = "user.history_events"


@dataclass(frozen=True)
class ModelInput:
    name: str
    source: str
    dtype: str = "int64"
    shape: tuple[str, ...] = ("batch", "seq")


@dataclass(frozen=True)
class Manifest:
    model_kind: str  # e.g. "sasrec"
    task: str  # "next_item": scores over the whole item index
    model_version: str
    inputs: tuple[ModelInput, ...]
    output: str  # name of the (batch, num_items) score output
    num_items: int
    schema: FeatureSchema
    item_index_sha256: str
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    # Differentially private training: {"epsilon", "delta", "unit", "noise_multiplier", ...}
    # spent by the whole run (trainer/families/private.py); empty for ordinary training.
    privacy: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def schema_hash(self) -> str:
        return self.schema.hash

    @property
    def max_history(self) -> int:
        return self.schema.max_history

    @property
    def needs(self) -> FeatureContract:
        """The raw features this model reads at serving time (the store must serve them with
        these kinds): those its feature inputs list in training["inputs"]; none for a model
        that reads only the history."""
        described = self.training.get("inputs")
        if not isinstance(described, dict):
            return FeatureContract(max_history=self.max_history)
        read = {
            side: {n for key in keys for n in described.get(key, [])}
            for side, keys in (("user", ("user_cat", "user_num")), ("item", ("item_cat", "item_num", "item_multi")))
        }
        full = self.schema.contract()
        return FeatureContract(
            user={n: k for n, k in full.user.items() if n in read["user"]},
            item={n: k for n, k in full.item.items() if n in read["item"]},
            max_history=self.max_history,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "model_kind": self.model_kind,
            "task": self.task,
            "model_version": self.model_version,
            "inputs": [
                {"name": i.name, "source": i.source, "dtype": i.dtype, "shape": list(i.shape)} for i in self.inputs
            ],
            "output": self.output,
            "num_items": self.num_items,
            "schema": self.schema.to_dict(),
            "schema_hash": self.schema_hash,
            "item_index_sha256": self.item_index_sha256,
            "training": self.training,
            "metrics": self.metrics,
            "versions": self.versions,
            "files": self.files,
            "privacy": self.privacy,
            "created_at": self.created_at,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        if d.get("format_version") != FORMAT_VERSION:
            raise FailedPrecondition(
                f"artifact format_version {d.get('format_version')!r} is not supported "
                f"(this recsys reads {FORMAT_VERSION})"
            )
        schema = FeatureSchema.from_dict(d["schema"])
        if d.get("schema_hash") and d["schema_hash"] != schema.hash:
            raise FailedPrecondition("artifact manifest is corrupt: schema_hash does not match its schema")
        return cls(
            model_kind=d["model_kind"],
            task=d["task"],
            model_version=d["model_version"],
            inputs=tuple(
                ModelInput(i["name"], i["source"], i.get("dtype", "int64"), tuple(i.get("shape", ())))
                for i in d["inputs"]
            ),
            output=d["output"],
            num_items=int(d["num_items"]),
            schema=schema,
            item_index_sha256=d["item_index_sha256"],
            training=d.get("training", {}),
            metrics=d.get("metrics", {}),
            versions=d.get("versions", {}),
            files=d.get("files", {}),
            privacy=d.get("privacy", {}),
            created_at=d.get("created_at", ""),
        )


@dataclass(frozen=True)
class ItemIndex:
    """Item ids in model column order, with display titles and training popularity."""

    item_ids: tuple[str, ...]
    titles: tuple[str, ...]
    popularity: tuple[int, ...]

    @property
    def sha256(self) -> str:
        return item_ids_sha256(self.item_ids)

    def to_dict(self) -> dict[str, Any]:
        return {"item_ids": list(self.item_ids), "titles": list(self.titles), "popularity": list(self.popularity)}

    @classmethod
    def read(cls, artifact_dir: str | Path) -> ItemIndex:
        d = json.loads((Path(artifact_dir) / ITEM_INDEX).read_text())
        ids = tuple(d["item_ids"])
        titles = tuple(d.get("titles") or [""] * len(ids))
        popularity = tuple(int(p) for p in (d.get("popularity") or [0] * len(ids)))
        if not (len(ids) == len(titles) == len(popularity)):
            raise FailedPrecondition(f"{ITEM_INDEX}: item_ids, titles and popularity differ in length")
        return cls(ids, titles, popularity)


def read_user_index(artifact_dir: str | Path) -> dict[str, int]:
    """user id -> its user.id token (position in user_index.json + 2)."""
    path = Path(artifact_dir) / USER_INDEX
    if not path.is_file():
        raise FailedPrecondition(f"artifact {artifact_dir} reads user ids but has no {USER_INDEX}")
    ids = json.loads(path.read_text())["user_ids"]
    return {str(u): i + FIRST_TOKEN for i, u in enumerate(ids)}


def item_ids_sha256(item_ids: tuple[str, ...] | list[str]) -> str:
    return sha256_hex(canonical_json(list(item_ids)))


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(artifact_dir: str | Path) -> Manifest:
    path = Path(artifact_dir) / MANIFEST
    if not path.is_file():
        raise FailedPrecondition(f"{artifact_dir} is not a recsys artifact: {MANIFEST} is missing")
    return Manifest.from_dict(json.loads(path.read_text()))


class ChecksumError(FailedPrecondition):
    """Bytes (an artifact's file, a download) differ from the sha256 recorded for them."""


# Files every artifact has and every server reads: the manifest must list them.
REQUIRED_FILES = (MODEL, ITEM_INDEX)


def verify_files(artifact_dir: str | Path, manifest: Manifest) -> None:
    """Checks that the manifest lists every file of the directory (but itself), model.onnx and
    item_index.json included, each a plain name inside it, and that each matches its sha256:
    a server reads only bytes the manifest vouches for. `FailedPrecondition` (`ChecksumError`
    for changed bytes) on the first problem, in one line."""
    root = Path(artifact_dir)
    for name in REQUIRED_FILES:
        if name not in manifest.files:
            raise FailedPrecondition(f"artifact {artifact_dir}: {name} is not listed in its manifest")
    for name in manifest.files:
        if not _inside(name):
            raise FailedPrecondition(
                f"artifact {artifact_dir}: manifest entry {name[:60]!r} is not a file name inside the artifact"
            )
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if path.is_file() and name != MANIFEST and name not in manifest.files:
            raise FailedPrecondition(
                f"artifact {artifact_dir}: {name} is not listed in its manifest (no checksum vouches for it)"
            )
    for name, digest in manifest.files.items():
        path = root / name
        if not path.is_file():
            raise FailedPrecondition(f"artifact {artifact_dir}: {name} is missing")
        if file_sha256(path) != digest:
            raise ChecksumError(f"artifact {artifact_dir}: {name} does not match its checksum")


def _inside(name: str) -> bool:
    """A relative path that stays inside the directory: no root, no drive, no '..', no '.'."""
    parts = name.split("/")
    return bool(name) and "\\" not in name and ":" not in name and all(p not in ("", ".", "..") for p in parts)


def write_jsonl(path: str | Path, rows: Iterator[dict[str, Any]] | list[dict[str, Any]]) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")))
            f.write("\n")
            n += 1
    return n


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def write_atomically(target: str | Path, fill: Callable[[Path], None]) -> Path:
    """Calls `fill(tmp_dir)` on a fresh sibling directory, then moves it to `target`.

    Readers see either the old directory or the complete new one, never a half-written one;
    if `fill` raises, `target` is untouched and the temporary directory is removed.
    """
    target = Path(target).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        fill(tmp)
        for child in tmp.rglob("*"):
            if child.is_file():
                with open(child, "rb") as f:
                    os.fsync(f.fileno())
        fsync_dir(tmp)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def fsync_dir(path: Path) -> None:
    """Makes a directory's entries (new names, renames) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
