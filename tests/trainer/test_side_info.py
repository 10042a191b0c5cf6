"""User features and item side information for SASRec, GRU4Rec and Caser: the wrapper model,
the family's inputs, learning from user features, and the exported graph fed as the server feeds it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from recsys.artifact import MODEL, read_manifest
from recsys.schema import FIRST_TOKEN, PAD
from trainer.data.encoding import build_item_index, build_schema, encode_histories
from trainer.data.tables import load_tables
from trainer.families.next_item import TrainConfig
from trainer.families.side_info import SideInfoFamily, build_side_info_model, fit_side_info, prepare_side_info
from trainer.models.caser import Caser, CaserConfig
from trainer.models.content import FusedItemEmbedding
from trainer.models.gru4rec import GRU4Rec, GRU4RecConfig
from trainer.models.sasrec import SASRec, SASRecConfig
from trainer.models.side_info import SideInfoConfig, SideInfoModel

N, D = 12, 16
BACKBONES = {
    "sasrec": lambda: SASRec(SASRecConfig(num_items=N, max_len=6, hidden=D, heads=2, layers=1, inner=32)),
    "gru4rec": lambda: GRU4Rec(GRU4RecConfig(num_items=N, max_len=6, hidden=D, gru_hidden=16)),
    "caser": lambda: Caser(CaserConfig(num_items=N, max_len=6, hidden=D, window=3, horizontal=4, vertical=2)),
}


def _seq(batch: int = 4, length: int = 6) -> torch.Tensor:
    x = torch.randint(FIRST_TOKEN, N + FIRST_TOKEN, (batch, length), generator=torch.Generator().manual_seed(1))
    x[0, :3] = PAD
    return x


@pytest.mark.parametrize("name", list(BACKBONES))
def test_both_options_off_is_the_backbone(name: str) -> None:
    torch.manual_seed(0)
    backbone = BACKBONES[name]().eval()
    model = SideInfoModel(backbone, SideInfoConfig(hidden=D, num_items=N)).eval()
    assert model.user is None and model.fused == []
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in backbone.parameters())
    x = _seq()
    assert torch.equal(model(x), backbone(x))


@pytest.mark.parametrize("name", list(BACKBONES))
def test_user_vector_is_added_at_every_position(name: str) -> None:
    torch.manual_seed(0)
    model = SideInfoModel(BACKBONES[name](), SideInfoConfig(hidden=D, num_items=N, user_cat=(4, 5), n_user_num=1))
    model.eval()
    x = _seq()
    user_cat = torch.tensor([[2, 3], [3, 4], [0, 0], [2, 1]])
    user_num = torch.tensor([[0.5], [-1.0], [0.0], [2.0]])
    added = model.encode(x, user_cat, user_num) - model.backbone.encode(x)  # (B, L, D)
    user = model.user_vector(user_cat, user_num)  # (B, D)
    assert torch.allclose(added, user.unsqueeze(1).expand_as(added), atol=1e-6)
    scores = model(x, user_cat, user_num)
    assert scores.shape == (4, N)
    other = model(x, user_cat.flip(0), user_num.flip(0))
    assert not torch.allclose(scores, other)  # the user's features change the ranking
    with pytest.raises(ValueError, match="user features"):
        model(x)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_item_features_fuse_every_item_table_and_fold_into_a_constant(name: str) -> None:
    from trainer.models.content import ContentSASRecConfig

    torch.manual_seed(0)
    items = ContentSASRecConfig(num_items=N, num_attributes=5, max_attributes=2, text_buckets=2, max_words=1)
    model = SideInfoModel(BACKBONES[name](), SideInfoConfig(hidden=D, num_items=N, items=items))
    expected = ["item_emb", "out_emb"] if name == "caser" else ["item_emb"]
    assert model.fused == expected
    assert all(isinstance(getattr(model.backbone, t), FusedItemEmbedding) for t in expected)
    rows = N + FIRST_TOKEN
    attrs = torch.zeros(rows, 2, dtype=torch.int64)
    attrs[FIRST_TOKEN:, 0] = torch.arange(N) % 3 + FIRST_TOKEN
    attrs[FIRST_TOKEN + 5 :, 1] = 4  # a second attribute for some items; item 0..4 only one
    known = torch.ones(rows, 1)
    known[:FIRST_TOKEN] = 0
    model.set_content(attrs, torch.zeros(rows, 1, dtype=torch.int64), torch.zeros(rows, 1), known)
    model.eval()
    x = _seq()
    before = model(x)
    view = model.export_view()
    assert torch.allclose(view(x), before, atol=1e-6)
    for table in expected:
        assert getattr(view.backbone, table).frozen is not None
        assert getattr(model.backbone, table).frozen is None  # the trained model is untouched
    attrs[FIRST_TOKEN + 1, 0] = 4  # new content for one item changes the scores
    model.set_content(attrs, torch.zeros(rows, 1, dtype=torch.int64), torch.zeros(rows, 1), known)
    assert not torch.allclose(model(x), before)


def _write_tables(directory: Path, *, users: int = 120, seed: int = 0) -> dict[str, Path]:
    """Users F walk to items of pool F, users M to pool M, each after one shared 'opening' item
    (c0..c5): the first prediction can only be right with the user's gender. Some users and
    items have no feature row; every user has an age."""
    rng = np.random.default_rng(seed)
    pools = {"F": [f"f{i}" for i in range(5)], "M": [f"m{i}" for i in range(5)]}
    rows, people = [], []
    for u in range(users):
        gender = "F" if u % 2 == 0 else "M"
        people.append((f"u{u:03d}", gender, int(rng.integers(18, 70))))
        t = 1_000 + 100 * u
        walk = [f"c{int(rng.integers(0, 6))}", *rng.choice(pools[gender], size=3, replace=False)]
        for step, item in enumerate(walk):
            rows.append((f"u{u:03d}", item, t + step))
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / f"{name}.csv" for name in ("interactions", "users", "items")}
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(paths["interactions"], index=False)
    # u000 and u001 have no row in the user table: missing values, not an error.
    pd.DataFrame(people[2:], columns=["user_id", "gender", "age"]).to_csv(paths["users"], index=False)
    item_ids = [f"c{i}" for i in range(6)] + pools["F"] + pools["M"]
    genres = ["Opening"] * 6 + ["Drama|Romance"] * 5 + ["Action"] * 5
    table = pd.DataFrame({"item_id": item_ids, "title": [f"Film {i}" for i in item_ids], "genres": genres})
    table.iloc[:-1].to_csv(paths["items"], index=False)  # m4 has no row: id embedding only
    return paths


def _prepared(paths: dict[str, Path], cfg: TrainConfig, *, users: bool = True, items: bool = True, with_tables=True):
    tables = load_tables(
        paths["interactions"], paths["users"] if with_tables else None, paths["items"] if with_tables else None
    )
    index = build_item_index(tables.interactions, tables.items)
    user_ids, sequences = encode_histories(tables.interactions, index)
    schema = build_schema(tables, index, cfg.max_len)
    data = prepare_side_info(cfg, tables, index, schema, user_ids, sequences, user_features=users, item_features=items)
    return tables, index, user_ids, sequences, schema, data


SMALL = {"max_len": 4, "hidden": 16, "heads": 1, "layers": 1, "inner": 32, "batch_size": 32, "seed": 0}


def test_missing_rows_read_as_missing_values_and_options_need_their_tables(tmp_path: Path) -> None:
    paths = _write_tables(tmp_path)
    cfg = TrainConfig(model="sasrec", **SMALL)
    _, index, user_ids, _, _, data = _prepared(paths, cfg)
    assert data.encoder.describe()["user_cat"] == ["gender"] and data.encoder.describe()["user_num"] == ["age"]
    missing = user_ids.index("u000")
    assert data.user_cat[missing].tolist() == [PAD] and data.user_num[missing].tolist() == [0.0]
    assert data.user_cat[user_ids.index("u002")].tolist() != [PAD]
    no_row = index.item_ids.index("m4") + FIRST_TOKEN
    assert (data.content.attrs[no_row] == PAD).all() and (data.content.words[no_row] == PAD).all()
    assert (data.content.attrs[index.item_ids.index("f0") + FIRST_TOKEN] != PAD).any()
    with pytest.raises(ValueError, match="user table"):
        _prepared(paths, cfg, items=False, with_tables=False)
    with pytest.raises(ValueError, match="item table"):
        _prepared(paths, cfg, users=False, with_tables=False)
    with pytest.raises(ValueError, match="apply to sasrec, gru4rec, caser"):
        _prepared(paths, TrainConfig(model="content_sasrec", **SMALL))
    with pytest.raises(ValueError, match="int8"):
        _prepared(paths, TrainConfig(model="sasrec", int8=True, **SMALL))


def test_batches_carry_each_windows_own_user(tmp_path: Path) -> None:
    paths = _write_tables(tmp_path)
    cfg = TrainConfig(model="sasrec", **SMALL)
    _, _, _, sequences, _, data = _prepared(paths, cfg)
    family = SideInfoFamily(cfg, sequences, 16, data)
    seen = 0
    for inputs, targets, rows, *_ in family.batches(np.random.default_rng(0)):
        for x, y, r in zip(inputs.numpy(), targets.numpy(), rows.numpy(), strict=True):
            window = [int(t) for t in x if t != PAD] + [int(y[-1])]
            seq = [int(t) for t in sequences[r]]
            assert any(seq[i : i + len(window)] == window for i in range(len(seq))), (window, seq)
            seen += 1
    assert seen >= len(sequences)
    with pytest.raises(ValueError, match="bucket"):
        SideInfoFamily(TrainConfig(model="sasrec", bucket=True, **SMALL), sequences, 16, data)


@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "caser"])
def test_user_features_are_learned(tmp_path: Path, name: str) -> None:
    """After the shared opening item only the gender tells the pools apart: a model that reads
    the user's features ranks the user's own pool first."""
    paths = _write_tables(tmp_path)
    options = {**SMALL, "epochs": 40, "eval_every": 40, "lr": 0.01, "dropout": 0.0, "threads": 1}
    if name != "sasrec":
        options = {k: v for k, v in options.items() if k not in ("heads", "inner")}
    cfg = TrainConfig(model=name, **options)
    _, index, user_ids, sequences, _, data = _prepared(paths, cfg, items=False)
    result = fit_side_info(cfg, sequences, len(index.item_ids), data, progress=False)
    model = result.model.eval()
    openings = torch.tensor([[PAD, PAD, PAD, int(s[0])] for s in sequences])
    rows = torch.arange(len(sequences))
    with torch.no_grad():
        top = model(openings, **data.inputs(rows)).argmax(1).numpy()
    pool = np.array([index.item_ids[t][0] for t in top])  # "f" / "m" / "c"
    known = [i for i, u in enumerate(user_ids) if u not in ("u000", "u001")]
    expected = np.array(["f" if int(user_ids[i][1:]) % 2 == 0 else "m" for i in known])
    assert (pool[known] == expected).mean() > 0.9


def test_training_with_both_options_and_validation(tmp_path: Path) -> None:
    paths = _write_tables(tmp_path)
    cfg = TrainConfig(model="caser", max_len=4, hidden=16, batch_size=32, epochs=2, eval_every=1, seed=0)
    _, index, _, sequences, _, data = _prepared(paths, cfg)
    result = fit_side_info(cfg, sequences, len(index.item_ids), data, progress=False)
    assert result.settings["user_features"] and result.settings["item_features"]
    assert 0.0 <= result.best_metrics["ndcg@10"] <= 1.0
    assert isinstance(result.model.backbone.out_emb, FusedItemEmbedding)


def test_export_is_served_exactly_as_the_server_feeds_it(tmp_path: Path) -> None:
    """The artifact's graph, fed by the server's own FeatureInputs, gives the torch model's scores."""
    from inference_server.feature_inputs import FeatureInputs
    from trainer.export.side_info import export_side_info
    from trainer.families.side_info import train_side_info

    paths = _write_tables(tmp_path / "data")
    cfg = TrainConfig(model="sasrec", **{**SMALL, "epochs": 2, "eval_every": 1})
    run = train_side_info(
        cfg,
        paths["interactions"],
        user_features=True,
        item_features=True,
        users=paths["users"],
        items=paths["items"],
        progress=False,
        log=lambda *_: None,
    )
    manifest = export_side_info(run, tmp_path / "artifact")
    assert manifest.task == "next_item"
    assert [(i.name, i.source) for i in manifest.inputs] == [
        ("user_cat", "user.cat"),
        ("user_num", "user.num"),
        ("history", "user.history"),
    ]
    assert manifest.training["inputs"]["order"] == ["user_cat", "user_num", "history"]
    assert manifest.metrics["export_parity_max_abs_diff"] <= 1e-4
    loaded = read_manifest(tmp_path / "artifact")
    index, user_ids, sequences, data = run.index, run.user_ids, run.sequences, run.data
    inputs = FeatureInputs(loaded, index.item_ids)
    session = ort.InferenceSession(str(tmp_path / "artifact" / MODEL), providers=["CPUExecutionProvider"])
    model = run.fit.model.eval()
    for user, features in (("u004", {"gender": "F", "age": 30}), ("u000", {})):
        tokens = sequences[user_ids.index(user)]
        feeds = inputs.feeds(features, tokens, np.zeros(1, dtype=np.int64))
        served = session.run(None, feeds)[0]
        cat, num = data.encoder.encode_user(features)
        window = torch.from_numpy(np.asarray(feeds["history"]))
        with torch.no_grad():
            expected = model(window, torch.tensor([cat]), torch.tensor([num], dtype=torch.float32)).numpy()
        assert np.allclose(served, expected, atol=1e-4)


def test_item_features_only_export_reads_the_history_alone(tmp_path: Path) -> None:
    from trainer.export.side_info import train_and_export_side_info

    paths = _write_tables(tmp_path / "data")
    cfg = TrainConfig(model="caser", max_len=4, hidden=16, batch_size=32, epochs=1, eval_every=1, seed=0)
    manifest = train_and_export_side_info(
        paths["interactions"],
        tmp_path / "artifact",
        cfg,
        user_features=False,
        item_features=True,
        items=paths["items"],
        progress=False,
        log=lambda *_: None,
    )
    assert [i.name for i in manifest.inputs] == ["history"]
    assert "inputs" not in manifest.training and manifest.training["side_info"]["item_features"]
    assert manifest.metrics["export_parity_max_abs_diff"] <= 1e-4


def test_models_can_be_rebuilt_from_prepared_data(tmp_path: Path) -> None:
    paths = _write_tables(tmp_path)
    cfg = TrainConfig(model="gru4rec", max_len=4, hidden=16, seed=0)
    _, index, _, _, _, data = _prepared(paths, cfg)
    model = build_side_info_model(cfg, len(index.item_ids), data)
    assert model.reads_users and model.fused == ["item_emb"]
    with pytest.raises(ValueError, match="without item features"):
        build_side_info_model(cfg, len(index.item_ids), _prepared(paths, cfg, items=False)[-1]).set_content(
            *data.content.tensors()
        )
