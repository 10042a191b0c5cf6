"""Item content for content-aware models: item table (+ optional vector file) -> model tensors,
and adding new items to a trained content model by re-export.

Item features come as `feature_rows` give them ({name: str | float | list[str]}) with the kinds
of the schema's item FeatureSpecs:

- CATEGORICAL `v`            -> attribute token "name=v"
- MULTI_CATEGORICAL [a, b]   -> attribute tokens "name=a", "name=b" (genres)
- NUMERIC x                  -> attribute token "name#k", k its quantile bucket (release year)
- TEXT (title, description)  -> lower-cased words, hashed into `text_buckets` (crc32, stable
                                across processes and machines); a word only counts if at least
                                `min_word_items` items of the fitting table have it: a word of a
                                single item is its id in disguise, and for a new item its
                                never-trained embedding would be noise
- a vector file              -> `item_id` + float vector, L2-normalised; zeros when missing;
                                optionally projected onto its top `vector_components`
                                principal directions over the fitting table's items (a 384-wide
                                text embedding is unique per item, an id in disguise; a few
                                principal directions keep what items share)

`ContentSpec` (JSON-able, fitted once on the training item table) fixes the vocabulary, bucket
edges and widths, so items added later are encoded exactly as the training items were. Tokens
the vocabulary lacks are dropped (an unseen genre contributes nothing rather than noise).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from recsys.schema import FIRST_TOKEN, PAD, FeatureKind, FeatureSpec

__all__ = [
    "CONTENT_CHECKPOINT",
    "ColdShelf",
    "ContentSpec",
    "ItemContent",
    "build_content_model",
    "fit_content",
    "load_content_model",
    "read_item_vectors",
    "save_content_model",
    "with_catalogue",
]

CONTENT_CHECKPOINT = "content_model.pt"
_WORD = re.compile(r"[^\W_]+")


@dataclass(frozen=True)
class ItemContent:
    """Per item token row (R = num_items + FIRST_TOKEN; rows PAD and OOV zero): attrs (R, A)
    int64, words (R, W) int64, vectors (R, V) float32, known (R, 1) float32 (1 = the item had
    training interactions, so its id embedding is trained)."""

    attrs: np.ndarray
    words: np.ndarray
    vectors: np.ndarray
    known: np.ndarray

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(a) for a in (self.attrs, self.words, self.vectors, self.known))


@dataclass(frozen=True)
class ContentSpec:
    features: tuple[tuple[str, str], ...]  # (name, kind) of the item features used
    attributes: tuple[str, ...]  # attribute tokens; id = position + FIRST_TOKEN
    numeric_edges: dict[str, list[float]]  # bucket edges per numeric feature
    max_attributes: int = 1
    text_buckets: int = 4096  # hashed word ids 1 .. text_buckets - 1
    max_words: int = 16
    vector_dim: int = 0  # width of the vectors the model reads (the projection's, with one)
    word_buckets: tuple[int, ...] | None = None  # hashed word ids kept; None keeps all
    vector_mean: tuple[float, ...] | None = None  # projection: centre (source width) ...
    vector_basis: tuple[tuple[float, ...], ...] | None = None  # ... and vector_dim principal directions

    @classmethod
    def fit(
        cls,
        rows: list[dict[str, Any]],
        specs: tuple[FeatureSpec, ...],
        *,
        vector_dim: int = 0,
        numeric_buckets: int = 8,
        text_buckets: int = 4096,
        max_words: int = 16,
        min_word_items: int = 1,
        vectors: np.ndarray | None = None,
        vector_components: int = 0,
    ) -> ContentSpec:
        """Fits the vocabulary, numeric bucket edges and kept words on `rows` ({"item_id", "features"}),
        and with `vector_components` > 0 a projection of the item vectors onto their top principal
        directions over `vectors` (M, vector_dim): the fitting table's items' vectors."""
        edges: dict[str, list[float]] = {}
        for spec in specs:
            if spec.kind is FeatureKind.NUMERIC:
                values = np.array(
                    [r["features"][spec.name] for r in rows if spec.name in r["features"]], dtype=np.float64
                )
                qs = np.quantile(values, np.arange(1, numeric_buckets) / numeric_buckets) if values.size else []
                edges[spec.name] = sorted({float(q) for q in qs})
        features = tuple((s.name, s.kind.value) for s in specs)
        draft = cls(features, (), edges, 1, text_buckets, max_words, vector_dim)
        tokens = [draft.attribute_tokens(r["features"]) for r in rows]
        vocabulary = tuple(sorted({t for ts in tokens for t in ts}))
        width = max([len(ts) for ts in tokens] + [1])
        kept = None
        if min_word_items > 1:
            items_with = np.bincount([w for r in rows for w in draft.word_ids(r["features"])], minlength=text_buckets)
            kept = tuple(int(w) for w in np.flatnonzero(items_with >= min_word_items))
        spec = dataclasses.replace(draft, attributes=vocabulary, max_attributes=width, word_buckets=kept)
        if vector_components and vector_dim:
            if vectors is None or len(vectors) < 2:
                raise ValueError("vector_components needs item vectors for at least 2 items of the item table")
            mean = vectors.mean(axis=0)
            _, _, directions = np.linalg.svd(vectors - mean, full_matrices=False)
            basis = directions[: min(vector_components, len(directions))]
            spec = dataclasses.replace(
                spec,
                vector_dim=len(basis),
                vector_mean=tuple(float(v) for v in mean),
                vector_basis=tuple(tuple(float(v) for v in row) for row in basis),
            )
        return spec

    @property
    def source_dim(self) -> int:
        """Components of the vectors in the item-vector file (before any projection)."""
        return len(self.vector_mean) if self.vector_mean is not None else self.vector_dim

    def project(self, vectors: np.ndarray) -> np.ndarray:
        """File vectors (..., source_dim) as the model reads them (projected when the spec has a projection)."""
        if self.vector_basis is None:
            return vectors
        return (np.asarray(vectors) - np.asarray(self.vector_mean)) @ np.asarray(self.vector_basis).T

    def attribute_tokens(self, features: dict[str, Any]) -> list[str]:
        out: list[str] = []
        for name, kind in self.features:
            value = features.get(name)
            if value is None:
                continue
            if kind == FeatureKind.CATEGORICAL:
                out.append(f"{name}={value}")
            elif kind == FeatureKind.MULTI_CATEGORICAL:
                out.extend(f"{name}={v}" for v in value)
            elif kind == FeatureKind.NUMERIC and name in self.numeric_edges and math.isfinite(float(value)):
                out.append(f"{name}#{int(np.searchsorted(self.numeric_edges[name], float(value), side='right'))}")
        return out

    def word_ids(self, features: dict[str, Any]) -> list[int]:
        """Hashed ids (1 .. text_buckets - 1) of the first `max_words` distinct kept words of the text features."""
        kept = None if self.word_buckets is None else set(self.word_buckets)
        seen: dict[int, None] = {}
        for name, kind in self.features:
            if kind != FeatureKind.TEXT or not isinstance(features.get(name), str):
                continue
            for word in _WORD.findall(features[name].lower()):
                bucket = 1 + zlib.crc32(f"{name}:{word}".encode()) % (self.text_buckets - 1)
                if kept is None or bucket in kept:
                    seen.setdefault(bucket, None)
        return list(seen)[: self.max_words]

    def encode(
        self,
        item_ids: tuple[str, ...] | list[str],
        rows: dict[str, dict[str, Any]],
        vectors: dict[str, np.ndarray] | None = None,
        known: np.ndarray | None = None,
    ) -> ItemContent:
        """Content of `item_ids` (model column order). rows: item_id -> features; items without a
        row get no content. known (N,) bool: items whose id embedding is trained (default all)."""
        n, rows_total = len(item_ids), len(item_ids) + FIRST_TOKEN
        vocab = {t: i + FIRST_TOKEN for i, t in enumerate(self.attributes)}
        attrs = np.full((rows_total, self.max_attributes), PAD, dtype=np.int64)
        words = np.full((rows_total, self.max_words), PAD, dtype=np.int64)
        vecs = np.zeros((rows_total, max(self.vector_dim, 1)), dtype=np.float32)
        with_vector = [j for j, item in enumerate(item_ids) if vectors and item in vectors] if self.vector_dim else []
        if with_vector:  # projected together: one matrix product, not one per item
            vecs[np.array(with_vector) + FIRST_TOKEN] = self.project(
                np.stack([vectors[item_ids[j]] for j in with_vector])
            )
        for j, item in enumerate(item_ids):
            features = rows.get(item, {})
            ids = [vocab[t] for t in self.attribute_tokens(features) if t in vocab][: self.max_attributes]
            attrs[j + FIRST_TOKEN, : len(ids)] = ids
            w = self.word_ids(features)
            words[j + FIRST_TOKEN, : len(w)] = w
        flags = np.zeros((rows_total, 1), dtype=np.float32)
        flags[FIRST_TOKEN:, 0] = 1.0 if known is None else np.asarray(known, dtype=np.float32)[:n]
        return ItemContent(attrs, words, vecs, flags)

    def model_fields(self) -> dict[str, int]:
        """The ContentSASRecConfig fields this spec fixes."""
        return {
            "num_attributes": len(self.attributes) + FIRST_TOKEN,
            "max_attributes": self.max_attributes,
            "text_buckets": self.text_buckets,
            "max_words": self.max_words,
            "vector_dim": self.vector_dim,
        }

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["features"] = [list(f) for f in self.features]
        d["attributes"] = list(self.attributes)
        d["word_buckets"] = None if self.word_buckets is None else list(self.word_buckets)
        d["vector_mean"] = None if self.vector_mean is None else list(self.vector_mean)
        d["vector_basis"] = None if self.vector_basis is None else [list(r) for r in self.vector_basis]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ContentSpec:
        return cls(
            features=tuple((n, k) for n, k in d["features"]),
            attributes=tuple(d["attributes"]),
            numeric_edges={k: list(v) for k, v in d["numeric_edges"].items()},
            max_attributes=int(d["max_attributes"]),
            text_buckets=int(d["text_buckets"]),
            max_words=int(d["max_words"]),
            vector_dim=int(d["vector_dim"]),
            word_buckets=None if d.get("word_buckets") is None else tuple(d["word_buckets"]),
            vector_mean=None if d.get("vector_mean") is None else tuple(d["vector_mean"]),
            vector_basis=None if d.get("vector_basis") is None else tuple(tuple(r) for r in d["vector_basis"]),
        )


def read_item_vectors(path: str | Path) -> dict[str, np.ndarray]:
    """Precomputed item vectors, L2-normalised: item_id -> (V,) float32.

    Formats: CSV/TSV with a header whose first column is `item_id` and every other column a
    component; or JSON lines {"item_id": ..., "vector": [...]}. Raises ValueError on ragged,
    non-numeric or non-finite vectors and on duplicate ids.
    """
    path = Path(path)
    out: dict[str, np.ndarray] = {}
    if path.suffix in (".jsonl", ".json"):
        entries = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        pairs = [(str(e["item_id"]), e["vector"]) for e in entries]
    elif path.suffix in (".csv", ".tsv"):
        df = pd.read_csv(path, sep="," if path.suffix == ".csv" else "\t", dtype={0: str})
        if df.columns[0] != "item_id" or df.shape[1] < 2:
            raise ValueError(f"{path}: expected columns item_id, then the vector's components")
        pairs = list(zip(df["item_id"].astype(str), df.iloc[:, 1:].to_numpy().tolist(), strict=True))
    else:
        raise ValueError(f"{path}: item vectors must be .csv, .tsv or .jsonl")
    dim = None
    for item, values in pairs:
        try:
            vec = np.asarray(values, dtype=np.float32)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: item {item!r} has a non-numeric vector") from None
        if vec.ndim != 1 or (dim is not None and len(vec) != dim) or not np.isfinite(vec).all():
            raise ValueError(f"{path}: item {item!r} has a vector of the wrong length or with non-finite values")
        if item in out:
            raise ValueError(f"{path}: item {item!r} appears twice")
        dim = len(vec)
        out[item] = vec / max(float(np.linalg.norm(vec)), 1e-12)
    if not out:
        raise ValueError(f"{path}: no item vectors")
    return out


def with_catalogue(index, items: pd.DataFrame | None):
    """The item index plus items of the item table that have no interactions (popularity 0),
    appended in id order: content models can recommend them."""
    from recsys.artifact import ItemIndex

    if items is None:
        return index
    have = set(index.item_ids)
    extra = sorted({str(i) for i in items["item_id"].dropna()} - have)
    titles = dict(zip(items["item_id"].astype(str), items["title"], strict=True)) if "title" in items.columns else {}
    return ItemIndex(
        index.item_ids + tuple(extra),
        index.titles + tuple("" if pd.isna(titles.get(i, "")) else str(titles.get(i, "")) for i in extra),
        index.popularity + (0,) * len(extra),
    )


def build_content_model(cfg, spec: ContentSpec, content: ItemContent, num_items: int):
    """A ContentSASRec sized by `cfg` (TrainConfig) and `spec`, carrying `content`."""
    from trainer.models.content import ContentSASRec

    model_cfg = dataclasses.replace(cfg.model_config(num_items), **spec.model_fields())
    model = ContentSASRec(model_cfg)
    model.item_emb.set_content(*content.tensors())
    return model


def save_content_model(path: str | Path, model, spec: ContentSpec, item_ids: tuple[str, ...]) -> Path:
    """One self-describing dict: model config, content spec, item ids (column order), weights."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "config": dataclasses.asdict(model.content_cfg),
            "spec": spec.to_dict(),
            "item_ids": list(item_ids),
            "state": model.state_dict(),
        },
        path,
    )
    return path


def load_content_model(path: str | Path):
    """-> (ContentSASRec in eval mode, ContentSpec, item ids) from `save_content_model`."""
    from trainer.models.content import ContentSASRec, ContentSASRecConfig

    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = ContentSASRec(ContentSASRecConfig(**saved["config"]))
    model.load_state_dict(saved["state"])
    return model.eval(), ContentSpec.from_dict(saved["spec"]), tuple(saved["item_ids"])


def fit_content(
    items: pd.DataFrame,
    item_vectors: str | Path | None = None,
    *,
    min_word_items: int = 1,
    numeric_buckets: int = 8,
    vector_components: int = 0,
):
    """-> (ContentSpec, rows {item_id: features}, vectors or None) fitted on the item table (the
    vectors' projection, with `vector_components`, on the vectors of its items only)."""
    from trainer.data.tables import feature_rows, infer_feature_specs

    specs = infer_feature_specs(items, "item_id")
    rows = list(feature_rows(items, specs, "item_id"))
    vectors = read_item_vectors(item_vectors) if item_vectors else None
    dim = len(next(iter(vectors.values()))) if vectors else 0
    own = (
        np.stack([vectors[r["item_id"]] for r in rows if r["item_id"] in vectors])
        if vectors and vector_components
        else None
    )
    spec = ContentSpec.fit(
        rows,
        specs,
        vector_dim=dim,
        min_word_items=min_word_items,
        numeric_buckets=numeric_buckets,
        vectors=own,
        vector_components=vector_components,
    )
    return spec, {r["item_id"]: r["features"] for r in rows}, vectors


def prepare_content_model(
    cfg, items: pd.DataFrame | None, index, sequences: list[np.ndarray], item_vectors: str | Path | None = None
):
    """-> (index with the whole catalogue, untrained ContentSASRec, ContentSpec) for `cfg`.

    The spec is fitted on the item table (`cfg.min_word_items`, `cfg.numeric_buckets`,
    `cfg.vector_components`); items without training events
    (not in any sequence's training part, i.e. all but its last event) get content only.
    """
    if items is None:
        raise ValueError(f"model {cfg.model} needs an item table (--items)")
    index = with_catalogue(index, items)
    spec, rows, vectors = fit_content(
        items,
        item_vectors,
        min_word_items=cfg.min_word_items,
        numeric_buckets=cfg.numeric_buckets,
        vector_components=cfg.vector_components,
    )
    n = len(index.item_ids)
    trained = [s[:-1] for s in sequences if len(s) >= 2]
    counts = np.bincount(np.concatenate(trained) - FIRST_TOKEN, minlength=n) if trained else np.zeros(n)
    content = spec.encode(index.item_ids, rows, vectors, counts > 0)
    return index, build_content_model(cfg, spec, content, n), spec


class ColdShelf:
    """Validation on items a content model has never trained on (cold start), for `fit(validator=...)`.

    windows (U, L) int64: each case's history as model tokens, left-padded; targets (U,): the
    position of each case's item in `shelf_ids`; the shelf items are encoded with the model's
    own spec and scored by their content alone (what a new item gets when it is added).
    `rows` must hold the shelf items' features. Calling it with a ContentSASRec returns
    {"cold_hr@k", "cold_ndcg@k"}: the target ranked among the shelf, 0-based rank = items scored
    higher + half of the other items scored the same (the expected rank under random tie-breaking,
    so identical vectors cannot win by luck of the order).
    """

    def __init__(
        self,
        spec: ContentSpec,
        rows: dict[str, dict[str, Any]],
        shelf_ids: list[str],
        windows: np.ndarray,
        targets: np.ndarray,
        vectors: dict[str, np.ndarray] | None = None,
        k: int = 10,
    ):
        if len(windows) != len(targets) or not len(targets):
            raise ValueError("a cold shelf needs one target per history, and at least one")
        missing = [i for i in shelf_ids if i not in rows]
        if missing:
            raise ValueError(f"no features for {len(missing)} shelf item(s), e.g. {missing[0]!r}")
        content = spec.encode(tuple(shelf_ids), rows, vectors)
        self.attrs, self.words, self.vectors, _ = (t[FIRST_TOKEN:] for t in content.tensors())
        self.windows = torch.from_numpy(np.asarray(windows, dtype=np.int64))
        self.targets = torch.from_numpy(np.asarray(targets, dtype=np.int64))
        self.k = k

    @torch.no_grad()
    def __call__(self, model) -> dict[str, float]:
        was_training = model.training
        model.eval()
        items = model.item_emb.content_of(self.attrs, self.words, self.vectors)  # (S, D)
        hidden = torch.cat([model.encode(self.windows[i : i + 512])[:, -1] for i in range(0, len(self.windows), 512)])
        scores = model.score_content(hidden, items)  # (U, S)
        target = scores.gather(1, self.targets[:, None])  # (U, 1)
        ranks = (scores > target).sum(1).double() + ((scores == target).sum(1).double() - 1) / 2  # (U,)
        hit = ranks < self.k
        model.train(was_training)
        return {
            f"cold_hr@{self.k}": float(hit.double().mean()),
            f"cold_ndcg@{self.k}": float(torch.where(hit, 1.0 / torch.log2(ranks + 2.0), 0.0).mean()),
        }
