"""`recsys data synth`: synthetic interactions at scale, and a trained model over them for the
serving benchmarks (latency and ANN recall against exact scoring are what they measure).

Data: `items` items with power-law popularity (item of popularity rank r drawn with weight
(r + 1) ** -zipf; ranks are shuffled over ids), `users` users whose history lengths are
geometric around interactions / users.

Latent structure (`topics` > 0), as real catalogues have categories and users have tastes:
every item belongs to one of `topics` topics, whose sizes follow a milder power law (topic of
size rank s has weight (s + 1) ** -topic_zipf); every user likes `user_topics` topics, drawn in
proportion to the topics' popularity mass. A fresh event is, with probability `taste`, an item
of one of the user's topics (chosen uniformly), else an item of the whole catalogue; either way
items are drawn by popularity. Successors (below) are, with probability `taste`, items of the
same topic. With topics = 0 there are no topics: fresh events and successors are global draws.

Sequential structure: each item has `successors` fixed follow-up items; with probability
`follow` the next event is one of the current item's successors, else a fresh draw.

Coverage (`cover`): fresh draws first walk through a permutation of the items (per topic when
there are topics: a fresh draw of topic t takes topic t's next unseen item while there is one),
so every item occurs once there are at least as many fresh draws as items; with topics nearly
so (a topic drawn less often than it has items keeps some of them unseen).

Generation streams: users are produced in chunks of `chunk_users`, vectorised over the chunk,
and appended to a Parquet (or CSV) file, so memory stays bounded by the chunk. With topics,
`--out` also writes items.<fmt> (item_id, category): the item's topic as an item feature.
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
    topics: int = 1000  # latent item topics (categories); 0 = none
    topic_zipf: float = 0.5  # topic size exponent (size rank s has weight (s + 1) ** -topic_zipf)
    user_topics: int = 3  # topics each user likes
    taste: float = 0.7  # probability that a fresh draw / a successor stays in the user's / item's topic
    max_length: int = 2000  # longest history
    cover: bool = True  # every item occurs at least once (needs interactions >= items)
    chunk_users: int = 50_000
    seed: int = 0

    def check(self) -> None:
        if min(self.items, self.users, self.interactions, self.successors, self.chunk_users, self.user_topics) < 1:
            raise ValueError("items, users, interactions, successors, user_topics and chunk_users must be >= 1")
        if self.interactions < 2 * self.users:
            raise ValueError(f"interactions ({self.interactions}) must be at least 2 per user ({self.users} users)")
        if self.cover and self.interactions < self.items:
            raise ValueError(f"cover needs interactions ({self.interactions}) >= items ({self.items})")
        if not 0 <= self.follow <= 1 or not 0 <= self.taste <= 1 or self.zipf < 0 or self.topic_zipf < 0:
            raise ValueError("follow and taste must be in [0, 1], zipf and topic_zipf >= 0")
        if not 0 <= self.topics <= self.items:
            raise ValueError(f"topics must be in [0, items], got {self.topics}")


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


class _Catalogue:
    """Items grouped by topic (one group when there are none) with popularity-weighted draws
    inside a topic or over everything, and the coverage walk."""

    def __init__(self, cfg: SynthConfig, rng: np.random.Generator):
        self.rng = rng
        weight = np.empty(cfg.items)
        weight[rng.permutation(cfg.items)] = (np.arange(cfg.items) + 1.0) ** -cfg.zipf  # item -> popularity weight
        groups = max(cfg.topics, 1)
        size_weight = (np.arange(groups) + 1.0) ** -cfg.topic_zipf
        # Every topic gets at least one item, the rest in proportion to the size weights.
        topic = np.concatenate(
            [np.arange(groups), rng.choice(groups, cfg.items - groups, p=size_weight / size_weight.sum())]
        )
        self.topic = rng.permutation(topic) if cfg.topics else np.zeros(cfg.items, dtype=np.int64)  # item -> topic
        self.by_topic = np.argsort(self.topic, kind="stable")  # items, grouped by topic
        self.cdf = np.cumsum(weight[self.by_topic] / weight.sum())
        self.bounds = np.searchsorted(
            self.topic[self.by_topic], np.arange(groups + 1)
        )  # topic t: by_topic[b[t]:b[t+1]]
        self.low = np.concatenate([[0.0], self.cdf])[self.bounds[:-1]]  # cumulative mass before topic t
        self.high = self.cdf[self.bounds[1:] - 1]
        self.mass = self.high - self.low  # popularity mass of each topic
        # Coverage: per topic, its items in random order; `seen[t]` of them handed out so far.
        self.walk = (
            np.concatenate([rng.permutation(self.by_topic[a:b]) for a, b in zip(self.bounds[:-1], self.bounds[1:])])
            if cfg.cover
            else None
        )
        self.seen = np.zeros(groups, dtype=np.int64)

    def popular(self, topics: np.ndarray | None, n: int) -> np.ndarray:
        """n popularity-weighted items, inside `topics` (n,) or over the whole catalogue (None)."""
        u = self.rng.random(n)
        if topics is None:
            pos = np.searchsorted(self.cdf, u, side="right")
            return self.by_topic[np.minimum(pos, len(self.cdf) - 1)]
        pos = np.searchsorted(self.cdf, self.low[topics] + u * self.mass[topics], side="right")
        return self.by_topic[np.clip(pos, self.bounds[topics], self.bounds[topics + 1] - 1)]

    def topics_of_users(self, n: int, k: int) -> np.ndarray:
        """(n, k) liked topics, drawn by topic mass."""
        return self.rng.choice(len(self.mass), (n, k), p=self.mass / self.mass.sum())

    def fresh(self, topics: np.ndarray) -> np.ndarray:
        """Items for fresh draws of `topics` (n,): the topic's next unseen item while it has
        one (coverage), else a popularity draw inside the topic."""
        out = self.popular(topics, len(topics))
        if self.walk is None or not len(topics):
            return out
        order = np.argsort(topics, kind="stable")
        ts = topics[order]
        rank = np.arange(len(ts)) - np.searchsorted(ts, ts)  # rank of each draw inside its topic
        slot = self.seen[ts] + rank
        ok = slot < self.bounds[ts + 1] - self.bounds[ts]
        out[order[ok]] = self.walk[self.bounds[ts[ok]] + slot[ok]]
        self.seen += np.bincount(ts[ok], minlength=len(self.seen))
        return out


def generate(cfg: SynthConfig) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Chunks of (user index, item index, timestamp) int64 arrays, each user's events in time order."""
    cfg.check()
    rng = np.random.default_rng(cfg.seed)
    cat = _Catalogue(cfg, rng)
    draw_topic = cat.topics_of_users  # a global draw = a topic by mass, then an item inside it
    successor = cat.popular(None, cfg.items * cfg.successors).reshape(cfg.items, cfg.successors)
    if cfg.topics:
        same = rng.random((cfg.items, cfg.successors)) < cfg.taste
        rows = np.broadcast_to(cat.topic[:, None], same.shape)[same]
        successor[same] = cat.popular(rows, len(rows))
    lengths = _lengths(cfg, rng)
    for first in range(0, cfg.users, cfg.chunk_users):
        lens = lengths[first : first + cfg.chunk_users]
        n, longest = len(lens), int(lens.max())
        liked = cat.topics_of_users(n, cfg.user_topics)  # (n, user_topics)
        seq = np.zeros((n, longest), dtype=np.int64)
        for t in range(longest):
            active = np.flatnonzero(lens > t)
            fresh = np.ones(len(active), dtype=bool) if t == 0 else rng.random(len(active)) >= cfg.follow
            nxt = np.empty(len(active), dtype=np.int64)
            who = active[fresh]
            topics = draw_topic(len(who), 1)[:, 0]
            if cfg.topics:
                mine = rng.random(len(who)) < cfg.taste
                topics[mine] = liked[who[mine], rng.integers(0, cfg.user_topics, int(mine.sum()))]
            nxt[fresh] = cat.fresh(topics)
            if t:
                follow = active[~fresh]
                nxt[~fresh] = successor[seq[follow, t - 1], rng.integers(0, cfg.successors, len(follow))]
            seq[active, t] = nxt
        mask = np.arange(longest)[None, :] < lens[:, None]
        users = np.broadcast_to(np.arange(first, first + n)[:, None], seq.shape)[mask]
        start = 1_600_000_000 + rng.integers(0, 10_000_000, n)
        times = (start[:, None] + np.cumsum(rng.integers(1, 3600, seq.shape), axis=1))[mask]
        yield users.astype(np.int64), seq[mask], times.astype(np.int64)


def item_topics(cfg: SynthConfig) -> np.ndarray:
    """(items,) topic of every item, as `generate(cfg)` assigns them (all 0 without topics)."""
    return _Catalogue(cfg, np.random.default_rng(cfg.seed)).topic


def _ids(prefix: str, values: np.ndarray):
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.binary_join_element_wise(pa.scalar(prefix), pc.cast(pa.array(values), pa.string()), "")


def write_synth(cfg: SynthConfig, out_dir: str | Path, *, fmt: str = "parquet", log=print) -> dict:
    """Writes interactions.<fmt> (user_id u<n>, item_id i<n>, timestamp), with topics also
    items.<fmt> (item_id, category t<n>), and synth.json."""
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
    if cfg.topics:  # the item's topic as a categorical item feature
        items = pa.table([_ids("i", np.arange(cfg.items)), _ids("t", item_topics(cfg))], names=["item_id", "category"])
        items_path = out / f"items.{fmt}"
        if fmt == "parquet":
            pq.write_table(items, items_path, compression="zstd")
        else:
            pacsv.write_csv(items, items_path)
        summary["items_file"] = items_path.name
    (out / "synth.json").write_text(json.dumps(summary, indent=2))
    return summary


def _evaluate(model, windows, held_out, seen, counts, k: int = 10) -> dict:
    """Full-catalogue HR@k / NDCG@k of the held-out next items (tokens), seen items excluded,
    and the same for the most popular items (the baseline a model must beat)."""
    import torch

    from recsys.schema import FIRST_TOKEN

    hits, gains = [], []
    with torch.no_grad():
        for a in range(0, len(windows), 32):
            scores = model(torch.from_numpy(windows[a : a + 32]))  # (b, N)
            for row, items in enumerate(seen[a : a + 32]):
                scores[row, torch.from_numpy(items - FIRST_TOKEN)] = -torch.inf
            target = torch.from_numpy(held_out[a : a + 32] - FIRST_TOKEN)
            rank = (scores > scores.gather(1, target.unsqueeze(1))).sum(1)  # (b,) 0 = best
            hits.append((rank < k).float())
            gains.append(torch.where(rank < k, 1.0 / torch.log2(rank.float() + 2), 0.0))
    pop = np.argsort(-counts, kind="stable")
    pop_hits = 0
    for target, items in zip(held_out, seen):
        candidates = pop[: k + len(items)]
        top = candidates[~np.isin(candidates, items - FIRST_TOKEN)][:k]
        pop_hits += int(target - FIRST_TOKEN in top)
    return {
        f"hr@{k}": round(float(torch.cat(hits).mean()), 4),
        f"ndcg@{k}": round(float(torch.cat(gains).mean()), 4),
        f"popularity_hr@{k}": round(pop_hits / len(held_out), 4),
        "users": len(held_out),
    }


def train_synth_artifact(
    cfg: SynthConfig,
    out_dir: str | Path,
    *,
    export_users: int = 5000,
    ann: str = "auto",
    ann_backend: str | None = None,
    ann_params: dict | None = None,
    target_recall: float | None = 0.97,
    recall_users: int = 500,
    checkpoint: str | Path | None = None,
    log=print,
    **training,
):
    """`train_synth_model(cfg, **training)`, then `export_synth(...)` into `out_dir`; with
    `checkpoint`, the trained model is also saved there (torch.save of config + state dict)."""
    import torch

    model, sequences, counts, info = train_synth_model(cfg, log=log, **training)
    if checkpoint:
        torch.save({"config": asdict(model.cfg), "state": model.state_dict(), "info": info}, checkpoint)
    return export_synth(
        model,
        cfg,
        sequences,
        counts,
        info,
        out_dir,
        export_users=export_users,
        ann=ann,
        ann_backend=ann_backend,
        ann_params=ann_params,
        target_recall=target_recall,
        recall_users=recall_users,
        log=log,
    )


def train_synth_model(
    cfg: SynthConfig,
    *,
    steps: int = 1500,
    batch_size: int = 128,
    hidden: int = 64,
    max_len: int = 50,
    negatives: int = 512,
    lr: float = 3e-3,
    init_std: float = 0.02,
    valid_users: int = 500,
    threads: int = 0,
    log=print,
):
    """Generates `cfg`'s data in memory and trains SASRec for `steps` sampled-softmax steps.
    Returns (model in eval mode, sequences (token arrays per user), item counts, info dict of
    training settings and metrics). Item n is token n + FIRST_TOKEN.

    Training at 1M items on a few cores: the loss is trainer.families.losses's sampled softmax
    and the item table's gradients are sparse (SparseAdam for it, Adam for the rest), so a step
    costs the Transformer, not the 1M x D table. Embeddings
    start at N(0, init_std) (the common SASRec initialisation, RecBole's 0.02) rather than
    torch's N(0, 1): an item the data rarely shows then stays close to 0 instead of keeping a
    random vector as long as a learned one. The last event of the first `valid_users` users is
    held out (validation: HR@10 / NDCG@10 over the whole catalogue, next to popularity's).
    """
    import torch

    from recsys.schema import FIRST_TOKEN
    from trainer.data.batches import last_window, training_windows
    from trainer.families.losses import NegativeSampler, next_item_loss
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
    generate_s = time.perf_counter() - start
    log(f"generated {sum(map(len, sequences)):,} interactions of {len(sequences):,} users in {generate_s:.0f} s")
    valid = min(valid_users, len(sequences))
    held_out = np.array([seq[-1] for seq in sequences[:valid]], dtype=np.int64)
    train_seqs = [seq[:-1] for seq in sequences[:valid]] + sequences[valid:]
    valid_windows = np.stack([last_window(seq, max_len) for seq in train_seqs[:valid]]) if valid else None
    train_counts = counts - np.bincount(held_out - FIRST_TOKEN, minlength=cfg.items)

    model = SASRec(
        SASRecConfig(
            num_items=cfg.items, max_len=max_len, hidden=hidden, heads=2, layers=2, inner=4 * hidden, dropout=0.1
        )
    )
    with torch.no_grad():
        model.item_emb.weight.normal_(0.0, init_std)
        model.item_emb.weight[0].zero_()  # PAD
        model.pos_emb.weight.normal_(0.0, init_std)
    model.item_emb.sparse = True
    table = model.item_emb.weight
    optimizers = [
        torch.optim.SparseAdam([table], lr=lr),
        torch.optim.Adam([p for p in model.parameters() if p is not table], lr=lr),
    ]
    sampler = NegativeSampler(torch.from_numpy(train_counts), "popularity", alpha=0.75)
    inputs, targets = training_windows(train_seqs, max_len, rng, dtype=np.int32)
    log(
        f"{len(inputs):,} training windows; {steps} steps of {batch_size} = {steps * batch_size / len(inputs):.1f} epochs"
    )
    start = time.perf_counter()
    for step in range(steps):
        model.train()
        rows = torch.from_numpy(rng.integers(0, len(inputs), batch_size))
        loss = next_item_loss(
            model,
            torch.from_numpy(inputs)[rows].long(),
            torch.from_numpy(targets)[rows].long(),
            loss="sampled_softmax",
            sampler=sampler,
            negatives=negatives,
        )
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in optimizers:
            opt.step()
        if step % 200 == 0 or step == steps - 1:
            log(f"step {step + 1}/{steps}: loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)")
    train_s = time.perf_counter() - start
    model.item_emb.sparse = False
    model.eval()
    metrics = {}
    if valid:
        seen = [seq[-max_len:] for seq in train_seqs[:valid]]  # what the server excludes: the served window
        metrics = {"valid": _evaluate(model, valid_windows, held_out, seen, train_counts)}
        log(f"validation ({valid} users, last event held out): {metrics['valid']}")
    norms = table[FIRST_TOKEN:].detach().norm(dim=1).numpy()
    metrics["item_vector_norms"] = {
        q: round(float(np.quantile(norms, float(q))), 3) for q in ("0.5", "0.9", "0.99", "1.0")
    }
    metrics["train_seconds"] = round(train_s, 1)
    metrics["generate_seconds"] = round(generate_s, 1)
    info = {
        "metrics": metrics,
        "training": {
            "synth": asdict(cfg),
            "steps": steps,
            "batch_size": batch_size,
            "lr": lr,
            "negatives": negatives,
            "init_std": init_std,
            "hidden": hidden,
            "max_len": max_len,
            "valid_users": valid,
            "loss": "sampled_softmax (log-Q, popularity^0.75 negatives, sparse item gradients)",
        },
    }
    return model, sequences, counts, info


def export_synth(
    model,
    cfg: SynthConfig,
    sequences,
    counts,
    info: dict,
    out_dir: str | Path,
    *,
    export_users: int = 5000,
    ann: str = "auto",
    ann_backend: str | None = None,
    ann_params: dict | None = None,
    target_recall: float | None = 0.97,
    recall_users: int = 500,
    log=print,
):
    """Exports the artifact of `train_synth_model`'s results (see train_synth_artifact).

    The ANN recall (and faiss-ivf's nprobe, chosen to reach `target_recall`) is measured on the
    histories of `recall_users` users after the `export_users` exported ones, so the users the
    benchmark draws from the artifact are not the ones the index was tuned on."""
    from recsys.artifact import ItemIndex
    from recsys.schema import FIRST_TOKEN, FeatureSchema
    from trainer.data.batches import last_window
    from trainer.export.next_item import ExportInputs, export_artifact

    max_len = model.cfg.max_len
    tuning = sequences[export_users : export_users + recall_users]
    ann_options = {
        "params": ann_params,
        "target_recall": target_recall,
        "windows": np.stack([last_window(seq, max_len) for seq in tuning]) if tuning else None,
    }
    item_ids = tuple(f"i{n}" for n in range(cfg.items))
    index = ItemIndex(item_ids, tuple(f"Item {n}" for n in range(cfg.items)), tuple(int(c) for c in counts))
    schema = FeatureSchema(user_features=(), item_features=(), max_history=max_len, item_index_sha256=index.sha256)
    histories = (
        {
            "user_id": f"u{u}",
            "item_ids": [f"i{t - FIRST_TOKEN}" for t in seq.tolist()],
            "timestamps": list(range(len(seq))),
        }
        for u, seq in enumerate(sequences[:export_users])
    )
    log("exporting ...")
    return export_artifact(
        model,
        ExportInputs(
            model_kind="sasrec",
            max_len=max_len,
            item_index=index,
            schema=schema,
            histories=histories,
            users=iter(()),
            items=iter(()),
            training=info["training"],
            metrics=info["metrics"],
        ),
        out_dir,
        ann=ann,
        ann_backend=ann_backend,
        ann_options=ann_options,
    )
