"""Serving a next-item model that reads the kind of each history event (user.history_events):
the pipeline feeds kinds aligned with the item window, unknown kinds and events without one
read as OOV, explanations remove an item's kinds with it, and a manifest that reads kinds
without listing them is refused."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from inference_server.explain import leave_one_out_windows
from inference_server.feature_client import UserView
from inference_server.pipeline import Recommender
from recsys.artifact import (
    MODEL,
    SOURCE_USER_HISTORY,
    SOURCE_USER_HISTORY_EVENTS,
    ItemIndex,
    Manifest,
    ModelInput,
)
from recsys.errors import FailedPrecondition
from recsys.onnx_session import ModelSession
from recsys.schema import FIRST_TOKEN, OOV, PAD, FeatureSchema

ITEMS = ("a", "b", "c", "d")
KINDS = ["purchase", "view"]  # tokens 2 and 3
# Weight of an event by its kind token: PAD 0, OOV 0.5, purchase 10, view 1.
KIND_WEIGHT = np.array([0.0, 0.5, 10.0, 1.0], dtype=np.float32)
MAX_LEN = 4


def _model(path) -> None:
    """scores[b, j] = sum over positions of [item == j] * KIND_WEIGHT[kind]: the kind of each
    event decides how much its item counts."""
    table = np.zeros((len(ITEMS) + FIRST_TOKEN, len(ITEMS)), dtype=np.float32)
    table[FIRST_TOKEN:] = np.eye(len(ITEMS), dtype=np.float32)
    nodes = [
        helper.make_node("Gather", ["items_table", "item_seq"], ["per_item"], axis=0),  # (B, L, N)
        helper.make_node("Gather", ["kind_weight", "history_events"], ["w"], axis=0),  # (B, L)
        helper.make_node("Unsqueeze", ["w", "axis2"], ["w3"]),  # (B, L, 1)
        helper.make_node("Mul", ["per_item", "w3"], ["weighted"]),
        helper.make_node("ReduceSum", ["weighted", "axis1"], ["scores"], keepdims=0),  # (B, N)
    ]
    graph = helper.make_graph(
        nodes,
        "kinds",
        [
            helper.make_tensor_value_info("item_seq", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("history_events", TensorProto.INT64, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", len(ITEMS)])],
        [
            numpy_helper.from_array(table, "items_table"),
            numpy_helper.from_array(KIND_WEIGHT, "kind_weight"),
            numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _manifest(index: ItemIndex, kinds) -> Manifest:
    return Manifest(
        model_kind="sasrec",
        task="next_item",
        model_version="1",
        inputs=(
            ModelInput("item_seq", SOURCE_USER_HISTORY),
            ModelInput("history_events", SOURCE_USER_HISTORY_EVENTS),
        ),
        output="scores",
        num_items=len(ITEMS),
        schema=FeatureSchema(max_history=MAX_LEN),
        item_index_sha256=index.sha256,
        training={"events": kinds} if kinds is not None else {},
    )


class Users:
    """The feature service's answers, from a dict."""

    target = "test"

    def __init__(self, views: dict[str, UserView]):
        self.views = views

    def get_user(self, user_id, max_history, timeout_s=None):
        return self.views.get(user_id, UserView(user_id, False, ()))


@pytest.fixture
def serve(tmp_path):
    _model(tmp_path / MODEL)
    index = ItemIndex(ITEMS, ("A", "B", "C", "D"), (1, 1, 1, 1))

    def make(views, kinds=KINDS):
        manifest = _manifest(index, kinds)
        session = ModelSession(tmp_path, manifest)
        rec = Recommender(manifest, index, session, Users(views))
        rec.warm_up()
        return rec

    return make


def test_the_kind_of_each_event_reaches_the_model(serve):
    rec = serve(
        {
            "bought_b": UserView("bought_b", True, ("a", "b"), history_events=("view", "purchase")),
            "viewed_b": UserView("viewed_b", True, ("a", "b"), history_events=("purchase", "view")),
        }
    )
    bought = rec.recommend("bought_b", 2, exclude_seen=False)
    assert bought.item_ids == ["b", "a"] and bought.scores == pytest.approx([10.0, 1.0])
    viewed = rec.recommend("viewed_b", 2, exclude_seen=False)
    assert viewed.item_ids == ["a", "b"] and viewed.scores == pytest.approx([10.0, 1.0])


def test_unknown_kinds_events_without_one_and_histories_without_kinds_read_as_oov(serve):
    rec = serve(
        {
            "new_kind": UserView("new_kind", True, ("a", "b"), history_events=("wishlist", "")),
            "no_kinds": UserView("no_kinds", True, ("c",)),  # a view without kinds (request history)
        }
    )
    scores, _ = rec.score("new_kind", ["a", "b", "c"])
    assert scores == pytest.approx([KIND_WEIGHT[OOV], KIND_WEIGHT[OOV], 0.0])
    scores, _ = rec.score("no_kinds", ["c"])
    assert scores == pytest.approx([KIND_WEIGHT[OOV]])


def test_explanations_remove_an_items_events_with_their_kinds(serve):
    rec = serve({"u": UserView("u", True, ("a", "b", "a"), history_events=("view", "purchase", "view"))})
    rec_ = rec.recommend("u", 2, exclude_seen=False, explain=True)
    assert rec_.item_ids == ["b", "a"]
    # b was bought (weight 10): removing it drops b's score by 10; a was viewed twice: by 2
    assert [(a.name, a.contribution) for a in rec_.because_items[0]] == [("b", pytest.approx(10.0))]
    assert [(a.name, a.contribution) for a in rec_.because_items[1]] == [("a", pytest.approx(2.0))]


def test_leave_one_out_windows_carry_the_kinds_of_the_kept_events():
    tokens = np.array([5, 2, 3, 2], dtype=np.int64)
    kinds = np.array([2, 3, 3, 2], dtype=np.int64)
    removed, rows, kind_rows = leave_one_out_windows(tokens, 3, kinds)
    assert removed.tolist() == [2, 3]
    assert rows.tolist() == [[2, 3, 2], [PAD, 5, 3], [5, 2, 2]]
    assert kind_rows.tolist() == [[3, 3, 2], [PAD, 2, 3], [2, 3, 2]]


def test_a_model_reading_kinds_without_a_vocabulary_is_refused(serve):
    with pytest.raises(FailedPrecondition, match="lists no event kinds"):
        serve({}, kinds=None)
