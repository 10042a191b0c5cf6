"""`recsys evaluate`: offline evaluation of an exported artifact of any kind.

It runs the artifact's ONNX graph with ONNX Runtime, fed as the inference server feeds it, with
the history, user features and item features the artifact itself holds. What is computed
follows the manifest (`task`, the inputs' sources) and the test file's columns:

    next-item graph (SASRec, GRU4Rec, Caser, ensembles, content models) and two-tower (a next-item
    graph that also reads user features): every user_id,item_id row is a held-out item ranked
    against the catalogue (protocol "full") or sampled negatives ("sampled"): HR, NDCG, MRR,
    precision, MAP @k, AUC, plus catalogue coverage and long-tail exposure
    (trainer/evaluation/ranking.py)
    ranker (task "rank": DeepFM, DCN-v2, Conv1D CTR) on a `label` (0/1) or `rating` column:
    AUC, LogLoss, accuracy (trainer/evaluation/pointwise.py); on user_id,item_id rows only:
    each row a held-out positive ranked as above, by the ranker's probabilities
    rating model (task or model kind "rating") on a `rating` column: RMSE, MAE; on
    user_id,item_id rows only: ranked as above, by predicted rating

The result is one flat dict of numbers and strings; it starts with the artifact's model_kind
and task and names its protocol ("full", "sampled" or "pointwise"). Ranked protocols also give
the popularity baseline on the same rows and protocol (`popularity_HR@10`, ...), so a model's
figures come with the answer to "better than the most popular items?".
"""

from __future__ import annotations

from pathlib import Path

from inference_server.feature_inputs import USER_SOURCES
from recsys.artifact import SOURCE_USER_HISTORY, SOURCE_USER_HISTORY_EVENTS, Manifest
from trainer.evaluation.pointwise import classify, regress
from trainer.evaluation.ranking import rank_held_out
from trainer.evaluation.scorers import PairScorer, PopularityScorer, SequenceScorer, UserFeatureScorer
from trainer.evaluation.tables import ArtifactTables, read_pairs, read_rows

__all__ = ["FAMILIES", "evaluate_artifact", "model_family", "read_pairs"]

# How an artifact is fed: its history only; user features and history (two-tower); or per
# (user, candidate) features scored as probabilities ("rank") or ratings ("rating").
FAMILIES = ("next_item", "user_features", "rank", "rating")


def model_family(manifest: Manifest) -> str:
    """One of FAMILIES, from the manifest's task, model kind and input sources; ValueError for
    a graph the server could not feed either."""
    if manifest.task == "rating" or manifest.model_kind == "rating":
        return "rating"
    if manifest.task == "rank":
        return "rank"
    sources = {i.source for i in manifest.inputs}
    if manifest.task == "next_item" and sources in (
        {SOURCE_USER_HISTORY},
        {SOURCE_USER_HISTORY, SOURCE_USER_HISTORY_EVENTS},
    ):
        return "next_item"
    if manifest.task == "next_item" and SOURCE_USER_HISTORY in sources and sources <= USER_SOURCES:
        return "user_features"
    raise ValueError(f"cannot evaluate a {manifest.task!r} model with inputs from {sorted(sources)}")


def evaluate_artifact(
    artifact_dir: str | Path,
    test_path: str | Path,
    *,
    k: int = 10,
    protocol: str = "full",
    negatives: int = 100,
    sampling: str = "uniform",
    seed: int = 0,
    batch: int = 256,
    columns: dict[str, str] | None = None,
) -> dict:
    """Metrics of the artifact's model on `test_path` rows (see the module docstring).

    protocol "full" ranks the target against every item not in the user's history; "sampled"
    ranks it against `negatives` items drawn (uniformly or by popularity, from `seed`) from
    those, the protocol of many papers, reported for comparison only: it flatters every model.
    Labelled rows are scored pointwise whatever the protocol. `columns` ({standard: yours})
    names the test file's columns. Raises ValueError for a bad
    argument, an unreadable test file or one that does not fit the model.
    """
    if protocol not in ("full", "sampled"):
        raise ValueError(f"protocol must be full or sampled, got {protocol!r}")
    if sampling not in ("uniform", "popularity"):
        raise ValueError(f"sampling must be uniform or popularity, got {sampling!r}")
    tables = ArtifactTables.read(artifact_dir)
    manifest = tables.manifest
    family = model_family(manifest)
    test = read_rows(test_path, columns)
    head = {"model_kind": manifest.model_kind, "task": manifest.task}
    if family in ("rank", "rating"):
        scorer = PairScorer(artifact_dir, tables)
        if family == "rating" and "rating" in test.columns:
            return {**head, **regress(tables, scorer, test)}
        if family == "rating" and "label" in test.columns:
            raise ValueError("a rating model is scored on a rating column, not on labels")
        if family == "rank" and ("label" in test.columns or "rating" in test.columns):
            return {**head, **classify(tables, scorer, test, _threshold(manifest, test))}
    else:
        scorer = (SequenceScorer if family == "next_item" else UserFeatureScorer)(artifact_dir, tables)
    ranked = {"k": k, "protocol": protocol, "negatives": negatives, "sampling": sampling, "seed": seed, "batch": batch}
    result = {**head, **rank_held_out(tables, scorer, test, **ranked)}
    baseline = rank_held_out(tables, PopularityScorer(tables), test, **ranked)
    result.update({f"popularity_{name}": value for name, value in baseline.items() if "@" in name})
    return result


def _threshold(manifest: Manifest, test) -> float | None:
    """The rating threshold the ranker was trained with, when labels must come from ratings."""
    if "label" in test.columns:
        return None
    threshold = manifest.training.get("config", {}).get("threshold")
    if threshold is None:
        raise ValueError("the artifact records no rating threshold: give a label column (0/1)")
    return float(threshold)
