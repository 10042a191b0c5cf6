"""FeatureServiceCore without gRPC: validation, history limits, store failures."""

from __future__ import annotations

import pytest

from feature_service.service import FeatureServiceCore
from feature_service.stores import MemoryStore
from feature_service.stores.base import Event
from recsys.errors import InvalidArgument, Unavailable
from recsys.schema import FeatureSchema


@pytest.fixture
def core(schema: FeatureSchema) -> FeatureServiceCore:
    return FeatureServiceCore(MemoryStore(), schema.contract(), max_batch=3)


def test_max_history_zero_means_default_and_larger_is_capped(core: FeatureServiceCore) -> None:
    assert core.max_history_default == 3
    core.record_interactions([Event("u", f"i{t}", t) for t in (1, 2, 3)])
    core.record_interactions([Event("u", "i4", 4)])
    assert core.get_user_features(["u"])[0].history == ["i2", "i3", "i4"]
    assert core.get_user_features(["u"], 2)[0].history == ["i3", "i4"]
    assert core.get_user_features(["u"], 100)[0].history == ["i1", "i2", "i3", "i4"]
    capped = FeatureServiceCore(core.store, core.contract, max_history_limit=2)
    assert capped.max_history_limit == 3  # never below the default
    assert capped.get_user_features(["u"], 100)[0].history == ["i2", "i3", "i4"]


@pytest.mark.parametrize(
    ("events", "message"),
    [
        ([], "interactions is empty"),
        ([Event("u", "i", t) for t in (1, 2, 3, 4)], "4 events; at most 3"),
        ([Event("u", "i", 1), Event("", "i", 1)], r"interactions\[1\]: user_id is empty"),
        ([Event("u" * 257, "i", 1)], r"interactions\[0\]: user_id is longer than 256"),
        ([Event("u", "i", 1, "e" * 257)], r"interactions\[0\]: event_id is longer than 256"),
        ([Event("u", "i", 1), Event("u", "i", -5)], r"interactions\[1\]: timestamp must be > 0"),
        ([Event("u", "i", 2**53 + 1)], r"interactions\[0\]: timestamp must be > 0 and <= 2\*\*53"),
    ],
)
def test_bad_batches_write_nothing(core: FeatureServiceCore, events: list[Event], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        core.record_interactions(events)
    assert core.store.get_users(["u"], 10) == [None]


def test_id_batch_limit(core: FeatureServiceCore) -> None:
    assert core.get_item_features(["a", "b", "c"]) == [None, None, None]
    with pytest.raises(InvalidArgument, match="item_ids has 4 ids; at most 3"):
        core.get_item_features(["a", "b", "c", "d"])


def test_store_failure_is_unavailable(core: FeatureServiceCore) -> None:
    core.ping()
    closed: list[bool] = []
    core.on_close(lambda: closed.append(True))
    core.close()
    assert closed == [True]
    with pytest.raises(Unavailable, match="feature store unavailable: memory store is closed"):
        core.get_user_features(["u"])
    for call in (
        lambda: core.record_interactions([Event("u", "i", 1)]),
        lambda: core.update_user_features([("u", {})]),
        lambda: core.forget_user("u"),
        core.ping,
    ):
        with pytest.raises(Unavailable):
            call()


def test_feature_updates_are_checked_against_the_schema(core: FeatureServiceCore) -> None:
    assert core.update_user_features([("u1", {"age": 30.0, "gender": "F"}), ("u2", {"gender": None})]) == 2
    assert core.update_item_features([("i1", {"title": "A", "genres": ["Drama"]})]) == 1
    assert core.get_user_features(["u1"])[0].features == {"age": 30.0, "gender": "F"}
    with pytest.raises(InvalidArgument, match=r"rows\[0\]: feature 'genres' is not in the schema"):
        core.update_user_features([("u3", {"genres": ["Drama"]})])
    with pytest.raises(InvalidArgument, match=r"rows has 4 ids; at most 3"):
        core.update_item_features([(f"i{n}", {}) for n in range(4)])
    with pytest.raises(InvalidArgument, match=r"rows\[1\]: feature 'title' is text, got 3.0"):
        core.update_item_features([("i2", {}), ("i3", {"title": 3.0})])
    assert core.get_item_features(["i2"]) == [None]


def test_forget_user(core: FeatureServiceCore) -> None:
    core.record_interactions([Event("u", "i", 1)])
    assert core.forget_user("u") is True and core.get_user_features(["u"]) == [None]
    with pytest.raises(InvalidArgument, match="user_id is empty"):
        core.forget_user("")
    with pytest.raises(InvalidArgument, match="longer than 256"):
        core.forget_user("u" * 257)


def test_bad_configuration_is_refused(schema: FeatureSchema) -> None:
    with pytest.raises(ValueError):
        FeatureServiceCore(MemoryStore(), schema.contract(), max_history_default=-1)
    with pytest.raises(ValueError):
        FeatureServiceCore(MemoryStore(), schema.contract(), max_batch=0)
