"""`recsys data synth`: synthetic interactions at scale, and a quickly trained model over them
for the serving benchmarks (latency and ANN recall are measured, not model quality).

Data: `items` items with power-law popularity (item of popularity rank r drawn with probability
proportional to (r + 1) ** -zipf; ranks are shuffled over ids), `users` users whose history
lengths are geometric around interactions / users. Sequential structure: each item has
`successors` fixed follow-up items (themselves popularity-drawn); with probability `follow`
the next event is one of the current item's successors, else a fresh popularity draw. With
`cover`, the first `items` fresh draws are a permutation of all items, so every item occurs.

Generation streams: users are produced in chunks of `chunk_users`, vectorised over the chunk,
and appended to a Parquet (or CSV) file, so memory stays bounded by the chunk.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

__all__ = ["SynthConfig", "generate", "train_synth_artifact", "write_synth"]


@dataclass(frozen=True)
class SynthConfig:
    items: int = 1_000_000
    users: int = 1_000_000
    interactions: int = 50_000_000
    zipf: float = 0.9  # popularity exponent (rank r drawn with weight (r + 1) ** -zipf)
    follow: float = 0.6  # probability that the next item is a successor of the current one
    successors: int = 4  # successors per item
    max_length: int = 2000  # longest history
    cover: bool = True  # every item occurs at least once (needs interactions >= items)
    chunk_users: int = 50_000
    seed: int = 0

    def check(self) -> None:
        if min(self.items, self.users, self.interactions, self.successors, self.chunk_users) < 1:
            raise ValueError("items, users, interactions, successors and chunk_users must be >= 1")
        if self.interactions < 2 * self.users:
            raise ValueError(f"interactions ({self.interactions}) must be at least 2 per user ({self.users} users)")
        if self.cover and self.interactions < self.items:
            raise ValueError(f"cover needs interactions ({self.interactions}) >= items ({self.items})")
        if not 0 <= self.follow <= 1 or self.zipf < 0:
            raise ValueError("follow must be in [0, 1] and zipf >= 0")


def _lengths(cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Per-user history lengths >= 2 summing to exactly cfg.interactions."""
    mean = cfg.interactions / cfg.users
    lengths = 2 + rng.geometric(1.0 / max(mean - 1.0, 1.0), cfg.users) - 1
    lengths = np.minimum(lengths, cfg.max_length)
    # Rescale to the exact total: spread the difference over users, one event at a time.
    diff = cfg.interactions - int(lengths.sum())
    while diff:
        room = (lengths < cfg.max_length) if diff > 0 else (lengths > 2)
        idx = np.flatnonzero(room)
        if not len(idx):
            raise ValueError("interactions do not fit users x max_length")
        take = rng.choice(idx, min(abs(diff), len(idx)), replace=False)
        lengths[take] += 1 if diff > 0 else -1
        diff = cfg.interactions - int(lengths.sum())
    return lengths.astype(np.int64)


def generate(cfg: SynthConfig) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Chunks of (user index, item index, timestamp) int64 arrays, each user's events in time order."""
    cfg.check()
    rng = np.random.default_rng(cfg.seed)
    weights = (np.arange(cfg.items) + 1.0) ** -cfg.zipf
    cdf = np.cumsum(weights / weights.sum())
    by_rank = rng.permutation(cfg.items)  # popularity rank -> item index

    def popular(n: int) -> np.ndarray:
        return by_rank[np.minimum(np.searchsorted(cdf, rng.random(n)), cfg.items - 1)]

    successor = popular(cfg.items * cfg.successors).reshape(cfg.items, cfg.successors)
    cover = rng.permutation(cfg.items) if cfg.cover else np.zeros(0, dtype=np.int64)
    covered = 0
    lengths = _lengths(cfg, rng)
    for first in range(0, cfg.users, cfg.chunk_users):
        lens = lengths[first : first + cfg.chunk_users]
        n, longest = len(lens), int(lens.max())
        seq = np.zeros((n, longest), dtype=np.int64)
        for t in range(longest):
            active = np.flatnonzero(lens > t)
            fresh = np.ones(len(active), dtype=bool) if t == 0 else rng.random(len(active)) >= cfg.follow
            nxt = np.empty(len(active), dtype=np.int64)
            k = int(fresh.sum())
            draws = popular(k)
            if covered < len(cover):  # the first fresh draws walk through every item once
                m = min(k, len(cover) - covered)
                draws[:m] = cover[covered : covered + m]
                covered += m
            nxt[fresh] = draws
            if t:
                follow = active[~fresh]
                nxt[~fresh] = successor[seq[follow, t - 1], rng.integers(0, cfg.successors, len(follow))]
            seq[active, t] = nxt
        mask = np.arange(longest)[None, :] < lens[:, None]
        users = np.broadcast_to(np.arange(first, first + n)[:, None], seq.shape)[mask]
        start = 1_600_000_000 + rng.integers(0, 10_000_000, n)
        times = (start[:, None] + np.cumsum(rng.integers(1, 3600, seq.shape), axis=1))[mask]
        yield users.astype(np.int64), seq[mask], times.astype(np.int64)


def _ids(prefix: str, values: np.ndarray):
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.binary_join_element_wise(pa.scalar(prefix), pc.cast(pa.array(values), pa.string()), "")


def write_synth(cfg: SynthConfig, out_dir: str | Path, *, fmt: str = "parquet", log=print) -> dict:
    """Writes interactions.<fmt> (user_id u<n>, item_id i<n>, timestamp) and synth.json."""
    import pyarrow as pa

    if fmt not in ("parquet", "csv"):
        raise ValueError(f"format must be parquet or csv, got {fmt!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"interactions.{fmt}"
    tmp = path.with_name(path.name + ".tmp")
    schema = pa.schema([("user_id", pa.string()), ("item_id", pa.string()), ("timestamp", pa.int64())])
    if fmt == "parquet":
        import pyarrow.parquet as pq

        writer = pq.ParquetWriter(tmp, schema, compression="zstd")
    else:
        import pyarrow.csv as pacsv

        writer = pacsv.CSVWriter(tmp, schema)
    start, rows = time.perf_counter(), 0
    try:
        for users, items, times in generate(cfg):
            writer.write_table(pa.table([_ids("u", users), _ids("i", items), pa.array(times)], schema=schema))
            rows += len(users)
            log(f"{rows:,} / {cfg.interactions:,} interactions ({time.perf_counter() - start:.0f} s)")
    finally:
        writer.close()
    tmp.replace(path)
    summary = {"config": asdict(cfg), "file": path.name, "rows": rows, "seconds": round(time.perf_counter() - start, 1)}
    (out / "synth.json").write_text(json.dumps(summary, indent=2))
    return summary


def train_synth_artifact(cfg: SynthConfig, out_dir: str | Path, *, steps: int = 200, batch_size: int = 128,
                         hidden: int = 64, max_len: int = 50, negatives: int = 512, export_users: int = 5000,
                         ann: str = "auto", ann_backend: str | None = None, threads: int = 0, log=print):
    """Generates `cfg`'s data in memory, trains SASRec for `steps` sampled-softmax steps, and
    exports an artifact over all `cfg.items` items (histories of the first `export_users` users,
    for the feature service and the benchmark). Item ids and tokens: item n is column n."""
    import torch

    from recsys.artifact import ItemIndex
    from recsys.schema import FIRST_TOKEN, FeatureSchema
    from trainer.batches import training_windows
    from trainer.export import ExportInputs, export_artifact
    from trainer.losses import NegativeSampler, next_item_loss
    from trainer.models import SASRec, SASRecConfig

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    sequences, counts = [], np.zeros(cfg.items, dtype=np.int64)
    start = time.perf_counter()
    for users, items, _ in generate(cfg):
        counts += np.bincount(items, minlength=cfg.items)
        bounds = np.flatnonzero(np.diff(users)) + 1
        sequences.extend(np.split(items + FIRST_TOKEN, bounds))
    log(f"generated {sum(map(len, sequences)):,} interactions of {len(sequences):,} users in {time.perf_counter() - start:.0f} s")
    model = SASRec(SASRecConfig(num_items=cfg.items, max_len=max_len, hidden=hidden, heads=2, layers=2, inner=4 * hidden,
                                dropout=0.1))
    sampler = NegativeSampler(torch.from_numpy(counts), "uniform")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    inputs, targets = training_windows(sequences, max_len, rng)
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        rows = torch.from_numpy(rng.integers(0, len(inputs), batch_size))
        loss = next_item_loss(model, torch.from_numpy(inputs)[rows], torch.from_numpy(targets)[rows],
                              loss="sampled_softmax", sampler=sampler, negatives=negatives)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"step {step + 1}/{steps}: loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)")
    model.eval()
    item_ids = tuple(f"i{n}" for n in range(cfg.items))
    index = ItemIndex(item_ids, tuple(f"Item {n}" for n in range(cfg.items)), tuple(int(c) for c in counts))
    schema = FeatureSchema(user_features=(), item_features=(), max_history=max_len, item_index_sha256=index.sha256)
    histories = ({"user_id": f"u{u}", "item_ids": [f"i{t - FIRST_TOKEN}" for t in seq.tolist()],
                  "timestamps": list(range(len(seq)))} for u, seq in enumerate(sequences[:export_users]))
    log("exporting ...")
    return export_artifact(model, ExportInputs(
        model_kind="sasrec", max_len=max_len, item_index=index, schema=schema, histories=histories, users=iter(()),
        items=iter(()), training={"synth": asdict(cfg), "steps": steps, "batch_size": batch_size,
                                  "negatives": negatives, "loss": "sampled_softmax"},
        metrics={}), out_dir, ann=ann, ann_backend=ann_backend)
