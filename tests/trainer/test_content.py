"""Content features and the content-aware SASRec: encoding, cold items, export, adding items, serving."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from recsys.artifact import ItemIndex, read_manifest
from recsys.schema import FIRST_TOKEN, PAD, FeatureKind, FeatureSpec
from trainer.export.add_items import add_items
from trainer.families.content import ContentSpec, read_item_vectors
from trainer.families.next_item import TrainConfig
from trainer.models.content import ContentSASRec, ContentSASRecConfig
from trainer.pipeline import train_and_export

SPECS = (
    FeatureSpec("title", FeatureKind.TEXT),
    FeatureSpec("year", FeatureKind.NUMERIC, mean=1990.0, std=5.0),
    FeatureSpec("genres", FeatureKind.MULTI_CATEGORICAL, vocabulary=("Action", "Drama")),
    FeatureSpec("studio", FeatureKind.CATEGORICAL, vocabulary=("X", "Y")),
)
ROWS = [
    {"item_id": "a", "features": {"title": "Star Wars", "year": 1977.0, "genres": ["Action"], "studio": "X"}},
    {"item_id": "b", "features": {"title": "The Wars of Drama", "year": 1995.0, "genres": ["Action", "Drama"]}},
    {"item_id": "c", "features": {"title": "Calm", "studio": "Y"}},
]


def test_spec_encodes_every_kind_and_drops_unknown_tokens():
    spec = ContentSpec.fit(ROWS, SPECS, numeric_buckets=2)
    assert set(spec.attributes) == {"genres=Action", "genres=Drama", "studio=X", "studio=Y", "year#0", "year#1"}
    assert spec.max_attributes == 3  # item b: two genres and a year bucket
    rows = {r["item_id"]: r["features"] for r in ROWS}
    rows["new"] = {"title": "star WARS!", "genres": ["Western", "Drama"]}  # Western is unknown
    content = spec.encode(("a", "b", "c", "new", "absent"), rows, known=np.array([1, 1, 0, 0, 0], bool))
    assert content.attrs.shape == (5 + FIRST_TOKEN, 3)
    assert (content.attrs[:FIRST_TOKEN] == PAD).all() and (content.words[:FIRST_TOKEN] == PAD).all()
    vocab = {t: i + FIRST_TOKEN for i, t in enumerate(spec.attributes)}
    new_attrs = [a for a in content.attrs[3 + FIRST_TOKEN] if a != PAD]
    assert new_attrs == [vocab["genres=Drama"]]
    # same words, any case or punctuation -> same hashed ids; stable (crc32), shared with item a
    assert list(content.words[3 + FIRST_TOKEN][:2]) == list(content.words[0 + FIRST_TOKEN][:2])
    assert (content.words[4 + FIRST_TOKEN] == PAD).all() and (content.attrs[4 + FIRST_TOKEN] == PAD).all()
    assert content.known[FIRST_TOKEN:, 0].tolist() == [1, 1, 0, 0, 0]
    assert ContentSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_item_vectors_from_csv_and_jsonl_are_normalised_and_checked(tmp_path):
    csv = tmp_path / "v.csv"
    csv.write_text("item_id,x,y\n007,3,4\n8,1,0\n")
    vectors = read_item_vectors(csv)
    np.testing.assert_allclose(vectors["007"], [0.6, 0.8], rtol=1e-6)
    jsonl = tmp_path / "v.jsonl"
    jsonl.write_text('{"item_id": "a", "vector": [1, 1]}\n{"item_id": "b", "vector": [1, 2, 3]}\n')
    with pytest.raises(ValueError, match="wrong length"):
        read_item_vectors(jsonl)
    jsonl.write_text('{"item_id": "a", "vector": [1, 1]}\n{"item_id": "a", "vector": [1, 2]}\n')
    with pytest.raises(ValueError, match="twice"):
        read_item_vectors(jsonl)
    bad = tmp_path / "v.tsv"
    bad.write_text("id\tx\nq\t1\n")
    with pytest.raises(ValueError, match="item_id"):
        read_item_vectors(bad)


def small_model(known_last: bool = False) -> ContentSASRec:
    torch.manual_seed(0)
    spec = ContentSpec.fit(ROWS, SPECS, vector_dim=2)
    rows = {r["item_id"]: r["features"] for r in ROWS}
    rows["twin"] = dict(rows["a"])
    vectors = {"a": np.array([1.0, 0.0], np.float32), "twin": np.array([1.0, 0.0], np.float32)}
    ids = ("a", "b", "c", "twin")
    content = spec.encode(ids, rows, vectors, known=np.array([1, 1, 1, known_last], bool))
    cfg = ContentSASRecConfig(num_items=4, max_len=6, hidden=16, **spec.model_fields())
    model = ContentSASRec(cfg)
    model.item_emb.set_content(*content.tensors())
    return model.eval()


def test_a_cold_item_is_its_content_and_id_dropout_acts_only_in_training():
    model = small_model()
    table = model.item_emb.weight
    content = model.item_emb.content()
    # "twin" has item a's content and no trained id: its vector is the content part alone
    torch.testing.assert_close(table[3 + FIRST_TOKEN], content[0 + FIRST_TOKEN])
    assert not torch.allclose(table[0 + FIRST_TOKEN], content[0 + FIRST_TOKEN])  # a has an id embedding
    assert (table[PAD] == 0).all()
    torch.testing.assert_close(model.item_emb.weight, table)  # eval: deterministic
    model.train()
    model.item_emb.id_dropout = 1.0
    torch.testing.assert_close(model.item_emb.weight[FIRST_TOKEN:], content[FIRST_TOKEN:])


def test_export_view_folds_the_table_and_scores_the_same():
    model = small_model()
    view = model.export_view()
    assert view.item_emb.frozen is not None and "item_emb.frozen" not in view.state_dict()
    x = torch.tensor([[PAD, PAD, 2, 3, 4, 5], [2, 3, 2, 3, 4, 4]])
    with torch.no_grad():
        torch.testing.assert_close(view(x), model(x))
    with pytest.raises(ValueError, match="shape"):
        model.item_emb.set_content(
            torch.zeros(3, 1), model.item_emb.words, model.item_emb.vectors, model.item_emb.known
        )


@pytest.fixture(scope="module")
def cold_artifacts(tmp_path_factory, genre_taste_data):
    d = genre_taste_data(tmp_path_factory.mktemp("genres"))
    cfg = TrainConfig(
        model="content_sasrec",
        epochs=12,
        eval_every=4,
        max_len=8,
        hidden=16,
        inner=32,
        batch_size=64,
        lr=1e-2,
        id_dropout=0.5,
        seed=0,
    )
    train_and_export(
        d / "inter.csv", d / "trained", cfg, items=d / "items_train.csv", progress=False, log=lambda *_: None
    )
    manifest = add_items(d / "trained", d / "items_all.csv", d / "served")
    return d, manifest


@pytest.mark.slow
def test_new_items_are_added_by_re_export_without_retraining(cold_artifacts):
    d, manifest = cold_artifacts
    before, after = ItemIndex.read(d / "trained"), ItemIndex.read(d / "served")
    assert after.item_ids[: len(before.item_ids)] == before.item_ids  # existing columns unchanged
    assert after.item_ids[len(before.item_ids) :] == ("n0", "n1", "n2", "n3")
    assert after.popularity[-4:] == (0, 0, 0, 0)
    assert manifest.task == "next_item" and manifest.model_kind == "content_sasrec"
    assert manifest.schema.item_index_sha256 == after.sha256
    assert manifest.training["added_items"]["count"] == 4
    assert read_manifest(d / "trained").training["content"]["attributes"]
    with pytest.raises(ValueError, match="content model checkpoint"):
        add_items(d / "served", d / "items_all.csv", d / "again", content_checkpoint=d / "nothing.pt")


@pytest.mark.slow
def test_the_served_model_ranks_new_items_by_the_users_taste(cold_artifacts):
    from feature_service.server import create_feature_server
    from inference_server.server import create_inference_server

    d, _ = cold_artifacts
    fserver, fport, _, fcore = create_feature_server(d / "served", "memory://")
    iserver, _, _, rec = create_inference_server(d / "served", f"localhost:{fport}")
    try:
        right = 0
        users = [f"u{u:02d}" for u in range(0, 60, 3)]
        for user in users:
            scores, source = rec.score(user, ["n0", "n2", "n1", "n3"])  # A, A, B, B
            assert source == "model"
            a, b = np.mean(scores[:2]), np.mean(scores[2:])
            right += (a > b) == (int(user[1:]) % 2 == 0)
        top = rec.recommend("u00", k=28, exclude_seen=False)
        assert {"n0", "n2"} <= set(top.item_ids)  # new items are part of the served catalogue
    finally:
        iserver.stop(None)
        fserver.stop(None)
        rec.features.close()
        fcore.close()
    assert right >= 0.9 * len(users), f"new items ranked by taste for {right} of {len(users)} users"


def test_numeric_buckets_set_how_finely_a_release_year_is_told_apart():
    """With few buckets, films of the data's last two years share a token; more buckets part them."""
    import pandas as pd

    from trainer.data.encoding import build_item_index
    from trainer.families.content import prepare_content_model

    years = [1950, 1970, 1985, 1990, 1993, 1994, 1995, 1995, 1996, 1996, 1997, 1997, 1997, 1998]
    items = pd.DataFrame(
        {
            "item_id": [str(i) for i in range(len(years))],
            "title": [f"film {i}" for i in range(len(years))],
            "year": [float(y) for y in years],
        }
    )
    interactions = pd.DataFrame(
        {"user_id": ["u"] * len(years), "item_id": items["item_id"], "timestamp": range(len(years))}
    )
    index = build_item_index(interactions, items)
    sequences = [np.arange(len(years), dtype=np.int64) + FIRST_TOKEN]

    def year_tokens(buckets):
        cfg = TrainConfig(model="content_sasrec", numeric_buckets=buckets, hidden=8)
        _, _, spec = prepare_content_model(cfg, items, index, sequences)
        tokens = {int(y): spec.attribute_tokens({"year": float(y)}) for y in (1996, 1997, 1998)}
        return spec, tokens

    coarse, tokens = year_tokens(2)
    assert len(coarse.numeric_edges["year"]) == 1 and tokens[1997] == tokens[1998]
    fine, tokens = year_tokens(16)
    assert len(fine.numeric_edges["year"]) > 4 and len({tuple(t) for t in tokens.values()}) == 3
    with pytest.raises(ValueError, match="numeric_buckets must be >= 1"):
        TrainConfig(numeric_buckets=0).check()


def test_item_vectors_are_projected_onto_principal_directions_fitted_on_the_table_items_only():
    """vector_components: the projection is fitted on the fitting table's vectors; other items
    (new arrivals) are projected with it, and the spec carries it through JSON."""
    rng = np.random.default_rng(0)
    direction = np.array([3.0, 4.0, 0.0, 0.0]) / 5.0
    table = {f"i{k}": direction * rng.normal() + rng.normal(scale=0.01, size=4) for k in range(20)}
    own = np.stack(list(table.values()))
    spec = ContentSpec.fit(ROWS, SPECS, vector_dim=4, vectors=own, vector_components=1)
    assert spec.vector_dim == 1 and spec.source_dim == 4 and spec.model_fields()["vector_dim"] == 1
    np.testing.assert_allclose(np.abs(spec.vector_basis[0]), np.abs(direction), atol=0.01)
    new = {"new": direction * 2.0, "other": np.array([0.0, 0.0, 1.0, 0.0])}  # not in the fitting table
    content = spec.encode(("new", "other", "absent"), {}, new)
    projected = content.vectors[FIRST_TOKEN:, 0]
    assert abs(abs(projected[0] - spec.project(np.zeros(4))[0]) - 2.0) < 0.05  # two units along the direction
    assert abs(projected[1] - spec.project(np.zeros(4))[0]) < 0.05  # orthogonal: the centre's value
    assert projected[2] == 0.0  # no vector: zeros, as without a projection
    assert ContentSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ValueError, match="at least 2 items"):
        ContentSpec.fit(ROWS, SPECS, vector_dim=4, vectors=own[:1], vector_components=1)
