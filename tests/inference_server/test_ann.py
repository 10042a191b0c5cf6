"""ANN retrieval: each backend finds the largest inner products, an artifact exported with an
index answers Recommend like exact scoring, and the choice follows the catalogue size."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from feature_service.server import create_feature_server
from inference_server.retrieval import Retriever, use_ann
from inference_server.server import create_inference_server
from inference_server.speed import SpeedOptions
from recsys.ann import (
    BACKENDS,
    AnnSpec,
    build_index,
    exact_top_k,
    load_index,
    read_spec,
)
from recsys.artifact import read_manifest, verify_files
from recsys.errors import FailedPrecondition
from recsys.v1 import inference_pb2, inference_pb2_grpc


def vectors_with_spread_norms(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)) * rng.uniform(0.2, 3.0, size=(n, 1))).astype(np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_backend_finds_the_largest_inner_products_and_survives_a_round_trip(backend, tmp_path):
    vectors = vectors_with_spread_norms(3000, 16)
    queries = vectors_with_spread_norms(40, 16, seed=1)
    index = build_index(vectors, backend, {"nprobe": 40} if backend == "faiss-ivf" else None)
    cols, scores = index.search(queries, 10)
    exact, _exact_scores = exact_top_k(vectors, queries, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(cols.tolist(), exact.tolist())])
    assert recall >= 0.9
    found = cols >= 0
    np.testing.assert_allclose(
        scores[found], np.einsum("bd,bnd->bn", queries, vectors[np.maximum(cols, 0)])[found], rtol=1e-5, atol=1e-4
    )
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first

    index.save(tmp_path / "ann.index")
    np.save(tmp_path / "item_vectors.npy", vectors)
    spec = AnnSpec(backend=backend, dim=16, num_items=3000, params=index.params)
    (tmp_path / "retrieval.json").write_text(spec.to_json())
    loaded = load_index(tmp_path, read_spec(tmp_path))
    np.testing.assert_array_equal(loaded.search(queries, 10)[0], cols)
    one, _ = loaded.search(queries[:1], 10)  # a single query takes another path in some backends
    np.testing.assert_array_equal(one, cols[:1])


def test_unknown_backend_and_bad_vectors_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown ANN backend"):
        build_index(np.zeros((10, 4), np.float32), "annoy")
    (tmp_path / "retrieval.json").write_text('{"backend": "annoy", "dim": 4, "num_items": 10}')
    with pytest.raises(FailedPrecondition, match="unknown ANN backend"):
        read_spec(tmp_path)


def test_catalogue_size_decides_unless_told(trained_artifact):
    from trainer.export.ann import ANN_MIN_ITEMS, wants_ann

    assert not wants_ann("auto", ANN_MIN_ITEMS - 1) and wants_ann("auto", ANN_MIN_ITEMS)
    assert wants_ann("on", 10) and not wants_ann("off", 10**7)
    assert not use_ann(trained_artifact, "auto")  # 40 items: exported without an index
    with pytest.raises(FailedPrecondition, match="no ANN index"):
        use_ann(trained_artifact, "on")


@pytest.fixture(scope="module")
def ann_artifact(ring_data, tmp_path_factory):
    """A small SASRec exported with an ANN index although its catalogue is small."""
    from trainer.families.next_item import TrainConfig
    from trainer.pipeline import train_and_export

    out = tmp_path_factory.mktemp("ann") / "sasrec"
    cfg = TrainConfig(
        epochs=2,
        batch_size=32,
        max_len=10,
        hidden=16,
        heads=2,
        layers=1,
        inner=32,
        eval_every=1,
        seed=0,
        ann="on",
        ann_backend="faiss-hnsw",
    )
    train_and_export(
        ring_data["train"],
        out,
        cfg,
        users=ring_data["users"],
        items=ring_data["items"],
        progress=False,
        log=lambda *_: None,
    )
    return out


def test_exported_index_is_listed_checked_and_agrees_with_the_model(ann_artifact):
    manifest = read_manifest(ann_artifact)
    assert {"user_encoder.onnx", "item_vectors.npy", "ann.index", "retrieval.json"} <= set(manifest.files)
    verify_files(ann_artifact, manifest)
    spec = read_spec(ann_artifact)
    assert spec.metrics["recall_at_10_random_histories"] == 1.0  # 40 items: the graph is exhaustive
    retriever = Retriever(ann_artifact, manifest)
    retriever.warm_up()
    rng = np.random.default_rng(0)
    for _ in range(5):
        window = rng.integers(1, manifest.num_items + 1, (1, manifest.max_history))
        seen = rng.choice(manifest.num_items, 3, replace=False)
        cols, scores = retriever.top_k(window, 5, seen)
        exact, _exact_scores = retriever.exact_top_k(window, 5, seen)
        assert cols.tolist() == exact.tolist() and not set(cols) & set(seen)
        np.testing.assert_allclose(retriever.score_items(window, cols), scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["ann_artifact", "ensemble_artifact"])  # a SASRec; an ensemble (tests/conftest.py)
def test_server_answers_through_the_index_as_it_would_exactly(name, request):
    artifact = request.getfixturevalue(name)
    fserver, fport, _, fcore = create_feature_server(artifact, "memory://")
    servers = {}
    try:
        for mode in ("on", "off"):
            servers[mode] = create_inference_server(artifact, f"localhost:{fport}", speed=SpeedOptions(ann=mode))
        answers = {}
        for mode, (_, port, _, recommender) in servers.items():
            assert (recommender.ann is not None) == (mode == "on")
            with grpc.insecure_channel(f"localhost:{port}") as channel:
                stub = inference_pb2_grpc.InferenceServiceStub(channel)
                reply = stub.Recommend(
                    inference_pb2.RecommendRequest(user_id="u003", k=8, exclude_seen=True), timeout=10
                )
                ids = [i.item_id for i in reply.items]
                scored = stub.Score(inference_pb2.ScoreRequest(user_id="u003", item_ids=ids), timeout=10)
                answers[mode] = (ids, [i.score for i in reply.items], list(scored.scores))
                assert reply.source == inference_pb2.SOURCE_MODEL
        assert answers["on"][0] == answers["off"][0]
        np.testing.assert_allclose(answers["on"][1], answers["off"][1], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(answers["on"][2], answers["on"][1], rtol=1e-4, atol=1e-4)
    finally:
        for server, _, _, recommender in servers.values():
            server.stop(None)
            recommender.features.close()
        fserver.stop(None)
        fcore.close()


def test_ivf_nprobe_is_tuned_to_the_smallest_that_reaches_the_target_recall():
    from trainer.export.ann import ann_recall, tune_nprobe

    rng = np.random.default_rng(3)
    centres = rng.normal(size=(20, 16))
    vectors = (centres[rng.integers(0, 20, 4000)] + 0.5 * rng.normal(size=(4000, 16))).astype(np.float32)
    queries = (centres[rng.integers(0, 20, 100)] + 0.5 * rng.normal(size=(100, 16))).astype(np.float32)
    index = build_index(vectors, "faiss-ivf", {"nlist": 64, "nprobe": 1})
    sweep = tune_nprobe(index, vectors, queries, 10, 0.95)
    chosen = int(index.params["nprobe"])
    assert list(sweep) == [str(2**i) for i in range(len(sweep))] and list(sweep)[-1] == str(chosen)
    assert sweep[str(chosen)] >= 0.95 and all(r < 0.95 for r in list(sweep.values())[:-1])
    assert index.index.nprobe == chosen and ann_recall(index, vectors, queries, 10) == sweep[str(chosen)]
    assert list(sweep.values()) == sorted(sweep.values())  # more lists scanned, never worse


def test_norm_pruned_is_exact_at_alpha_1_skips_excluded_items_and_prunes():
    vectors = vectors_with_spread_norms(5000, 16, seed=4)
    queries = vectors_with_spread_norms(30, 16, seed=5)
    index = build_index(vectors, "norm-pruned", {"block": 256})
    assert index.filters and index.params["alpha"] == 1.0
    cols, scores = index.search(queries, 10)
    exact, exact_scores = exact_top_k(vectors, queries, 10)
    np.testing.assert_array_equal(cols, exact)
    np.testing.assert_allclose(scores, exact_scores, rtol=1e-5, atol=1e-4)
    skip = exact[0, [0, 2, 5]]
    got, _ = index.search(queries[:1], 10, skip)
    wider, _ = exact_top_k(vectors, queries[:1], 13)
    assert got[0].tolist() == [c for c in wider[0].tolist() if c not in set(skip.tolist())][:10]
    # The Cauchy-Schwarz stop: with one dominant item and the rest tiny, one block is enough.
    skewed = np.vstack([np.full((1, 16), 10.0, np.float32), vectors * 1e-3]).astype(np.float32)
    pruned = build_index(skewed, "norm-pruned", {"block": 64})
    calls = []
    real = pruned.index.sorted

    class Counting(np.ndarray):
        def __getitem__(self, key):
            if isinstance(key, slice):  # a block of rows (products of blocks are Counting too)
                calls.append(key)
            return np.ndarray.__getitem__(self, key)

    pruned.index.sorted = real.view(Counting)
    assert pruned.search(np.ones((1, 16), np.float32), 1)[0][0, 0] == 0
    assert len(calls) == 1  # the first block only
    # max_scan bounds the rows scored: only the first (largest-norm) block is looked at.
    index.set_search(max_scan=256)
    capped, _ = index.search(queries, 10)
    assert (np.isin(capped, index.index.order[:256])).all()
    with pytest.raises(ValueError, match="does not filter"):
        build_index(vectors[:500], "faiss-ivf", {"nlist": 4}).search(queries, 5, skip)
