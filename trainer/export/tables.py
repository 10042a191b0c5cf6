"""The raw tables a feature-reading artifact carries (what `recsys features load` puts in the
store): histories.jsonl, users.jsonl and items.jsonl, and the data summary of its manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recsys.artifact import HISTORIES, ITEMS, USERS, write_jsonl
from recsys.schema import FeatureSchema
from trainer.data.encoding import history_rows
from trainer.data.tables import CleaningReport, Tables, feature_rows

__all__ = ["TABLE_FILES", "data_summary", "write_tables"]

TABLE_FILES = (HISTORIES, USERS, ITEMS)


def write_tables(directory: Path, tables: Tables, schema: FeatureSchema) -> None:
    """Every user's history, and the user and item rows with the schema's features."""
    write_jsonl(directory / HISTORIES, history_rows(tables.interactions))
    users = tables.users
    items = tables.items
    write_jsonl(directory / USERS, feature_rows(users, schema.user_features, "user_id") if users is not None else [])
    write_jsonl(directory / ITEMS, feature_rows(items, schema.item_features, "item_id") if items is not None else [])


def data_summary(report: CleaningReport) -> dict[str, Any]:
    """manifest.training["data"]: what cleaning kept and dropped."""
    return {
        "users": report.users,
        "items": report.items,
        "interactions": report.interactions,
        "dropped": report.dropped,
    }
