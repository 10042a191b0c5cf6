"""A tiny hand-written artifact: 3 users (one without features), 4 items, 5 events."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.artifact import HISTORIES, ITEMS, MANIFEST, USERS, Manifest, ModelInput, write_jsonl
from recsys.schema import FeatureKind, FeatureSchema, FeatureSpec

SCHEMA = FeatureSchema(
    user_features=(
        FeatureSpec("age", FeatureKind.NUMERIC, mean=30.0, std=10.0),
        FeatureSpec("gender", FeatureKind.CATEGORICAL, vocabulary=("F", "M")),
    ),
    item_features=(
        FeatureSpec("title", FeatureKind.TEXT),
        FeatureSpec("genres", FeatureKind.MULTI_CATEGORICAL, vocabulary=("Action", "Comedy", "Drama")),
    ),
    max_history=3,
    item_index_sha256="test-index",
)

HISTORY_ROWS = [
    # u1 has 4 events, one more than max_history; listed oldest first as the trainer writes them.
    {"user_id": "u1", "item_ids": ["i1", "i2", "i3", "i4"], "timestamps": [100, 200, 300, 400]},
    {"user_id": "u2", "item_ids": ["i2"], "timestamps": [150]},
]
USER_ROWS = [
    {"user_id": "u1", "features": {"age": 24, "gender": "M"}},
    {"user_id": "u3", "features": {"age": 53.5, "gender": "F"}},
]
ITEM_ROWS = [
    {"item_id": "i1", "features": {"title": "Toy Story (1995)", "genres": ["Comedy"]}},
    {"item_id": "i2", "features": {"title": "GoldenEye (1995)", "genres": ["Action"]}},
    {"item_id": "i3", "features": {"title": "Four Rooms (1995)", "genres": []}},
    {"item_id": "i4", "features": {"title": "Get Shorty (1995)", "genres": ["Action", "Comedy", "Drama"]}},
]


def write_artifact(path: Path, schema: FeatureSchema = SCHEMA) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(
        model_kind="sasrec",
        task="next_item",
        model_version="1",
        inputs=(ModelInput("item_seq", "user.history"),),
        output="scores",
        num_items=len(ITEM_ROWS),
        schema=schema,
        item_index_sha256=schema.item_index_sha256,
    )
    (path / MANIFEST).write_text(manifest.to_json())
    write_jsonl(path / HISTORIES, HISTORY_ROWS)
    write_jsonl(path / USERS, USER_ROWS)
    write_jsonl(path / ITEMS, ITEM_ROWS)
    return path


@pytest.fixture
def schema() -> FeatureSchema:
    return SCHEMA


@pytest.fixture
def artifact_dir(tmp_path: Path) -> Path:
    return write_artifact(tmp_path / "artifact")
