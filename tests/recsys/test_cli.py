"""`recsys train` against a stand-in model-family registry, and the CLI's one error handler.

The stand-in replaces trainer/registry.py in sys.modules: these tests check what the CLI does
with a `FamilySpec` (capability checks, config loading, torchrun launch, errors), not training.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass

import pytest
from click.testing import CliRunner

from recsys.cli import _options, main
from recsys.errors import FailedPrecondition

REGISTRY = "trainer.registry"
NEXT_ITEM = frozenset({"resume", "nproc", "forget_users", "pseudonymise", "popularity_debias"})


@dataclass(frozen=True)
class FakeConfig:
    model: str = "sasrec"
    epochs: int = 1
    seed: int = 0
    lr: float = 0.1
    popularity_debias: float = 0.0


@dataclass(frozen=True)
class FakeRankConfig:
    model: str = "deepfm"
    epochs: int = 1
    seed: int = 0


@pytest.fixture
def registry(monkeypatch):
    """A registry with sasrec (next_item, private too), ensemble (no DDP) and deepfm (rank);
    `registry.calls` records each train_and_export call, `registry.fail` makes it raise."""
    fake = types.ModuleType(REGISTRY)
    fake.calls, fake.fail = [], None

    def train_and_export(cfg, interactions, out, **options):
        if fake.fail is not None:
            raise fake.fail
        fake.calls.append((cfg, interactions, out, options))

    def spec(name, task, config_cls, prefix, supports):
        return types.SimpleNamespace(
            name=name,
            task=task,
            config_cls=config_cls,
            env_prefix=prefix,
            supports=frozenset(supports),
            train_and_export=train_and_export,
        )

    specs = {
        "sasrec": spec("sasrec", "next_item", FakeConfig, "RECSYS_FAKE_", NEXT_ITEM | {"private"}),
        "ensemble": spec("ensemble", "next_item", FakeConfig, "RECSYS_FAKE_", NEXT_ITEM - {"nproc"}),
        "deepfm": spec("deepfm", "rank", FakeRankConfig, "RECSYS_FAKE_RANK_", {"resume", "nproc", "forget_users"}),
    }

    def resolve(name):
        if name not in specs:
            raise ValueError(f"unknown model {name!r}; built-in: {', '.join(specs)}")
        return specs[name]

    fake.BUILTIN_NAMES, fake.resolve = tuple(specs), resolve
    monkeypatch.setitem(sys.modules, REGISTRY, fake)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    return fake


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "interactions.csv"
    path.write_text("user_id,item_id,timestamp\nu1,i1,1\n")
    return path


def train(table, tmp_path, *flags):
    return CliRunner().invoke(main, ["train", "--interactions", str(table), "--out", str(tmp_path / "a"), *flags])


def test_train_loads_the_family_config_and_calls_its_trainer(registry, table, tmp_path, monkeypatch):
    monkeypatch.setenv("RECSYS_FAKE_LR", "0.5")
    config = tmp_path / "train.toml"
    config.write_text("epochs = 9\nseed = 3\n")
    result = train(table, tmp_path, "--config", str(config), "--epochs", "4", "--quiet", "--popularity-debias", "1")
    assert result.exit_code == 0, result.output
    [(cfg, interactions, out, options)] = registry.calls
    assert cfg == FakeConfig(model="sasrec", epochs=4, seed=3, lr=0.5, popularity_debias=1.0)  # flags > env > file
    assert (interactions, out) == (str(table), str(tmp_path / "a"))
    assert options == {
        "users": None,
        "items": None,
        "progress": False,
        "resume": False,
        "forget_users": None,
        "pseudonymise_key": None,
        "item_vectors": None,
        "private": None,
        "columns": None,
    }

    assert train(table, tmp_path, "--model", "deepfm", "--seed", "5").exit_code == 0
    assert registry.calls[-1][0] == FakeRankConfig(model="deepfm", seed=5)  # the rank family's own config


def test_the_config_files_model_is_trained_unless_the_flag_names_another(registry, table, tmp_path):
    config = tmp_path / "ranker.toml"
    config.write_text('model = "deepfm"\nseed = 2\n')
    assert train(table, tmp_path, "--config", str(config)).exit_code == 0
    assert registry.calls[-1][0] == FakeRankConfig(model="deepfm", seed=2)  # not sasrec's family
    assert train(table, tmp_path, "--config", str(config), "--model", "sasrec").exit_code == 0
    assert registry.calls[-1][0].model == "sasrec"


def test_a_flag_the_family_does_not_support_is_a_usage_error(registry, table, tmp_path):
    result = train(table, tmp_path, "--model", "deepfm", "--popularity-debias", "1")
    assert result.exit_code == 2
    assert (
        "--popularity-debias is not supported by rank model 'deepfm'; it applies to sasrec, ensemble" in result.output
    )
    result = train(table, tmp_path, "--model", "ensemble", "--nproc", "2")
    assert result.exit_code == 2 and "--nproc is not supported by next_item model 'ensemble'" in result.output
    result = train(table, tmp_path, "--model", "deepfm", "--private")
    assert result.exit_code == 2 and "it applies to sasrec" in result.output
    result = train(table, tmp_path, "--private", "--resume")
    assert result.exit_code == 2 and "--private runs exactly --epochs epochs on one process" in result.output
    assert registry.calls == []


def test_an_unknown_model_names_the_built_in_ones(registry, table, tmp_path):
    result = train(table, tmp_path, "--model", "nope")
    assert result.exit_code == 2 and "unknown model 'nope'; built-in: sasrec, ensemble, deepfm" in result.output


def test_nproc_launches_torchrun_for_a_family_that_supports_it(registry, table, tmp_path, monkeypatch):
    launched = []
    fake = types.ModuleType("trainer.distributed")
    fake.launch = lambda nproc, argv: launched.append((nproc, argv)) or 0
    monkeypatch.setitem(sys.modules, "trainer.distributed", fake)
    argv = ["train", "--interactions", str(table), "--model", "deepfm", "--nproc", "2", "--out", "x"]
    monkeypatch.setattr(sys, "argv", ["recsys", *argv])
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 0, result.output
    assert launched == [(2, ["train", "--interactions", str(table), "--model", "deepfm", "--out", "x"])]
    assert registry.calls == []  # the ranks train, not the launcher


def test_domain_errors_are_one_line_without_a_traceback(registry, table, tmp_path):
    registry.fail = FailedPrecondition("artifact x: model.onnx does not match its checksum")
    result = train(table, tmp_path)
    assert result.exit_code == 1 and result.output == "Error: artifact x: model.onnx does not match its checksum\n"
    registry.fail = None
    config = tmp_path / "bad.json"
    config.write_text('{"epoch": 3}')
    result = train(table, tmp_path, "--config", str(config))
    assert result.exit_code == 1 and "unknown config field(s) epoch" in result.output  # a ValueError
    registry.fail = RuntimeError("a bug")
    result = train(table, tmp_path)
    assert isinstance(result.exception, RuntimeError)  # anything else keeps its traceback


def test_train_help_lists_the_registry_names(registry):
    result = CliRunner().invoke(main, ["train", "--help"])
    assert result.exit_code == 0 and "A built-in model (sasrec, ensemble, deepfm)" in result.output


def test_cli_defaults_are_the_server_configs_defaults():
    from feature_service.config import FeatureServiceConfig
    from inference_server.config import InferenceConfig

    features, inference = FeatureServiceConfig(), InferenceConfig()
    assert (features.port, features.store_url) == (_options.DEFAULT_FEATURES_PORT, None)
    assert inference.port == _options.DEFAULT_INFERENCE_PORT
    assert inference.features_target == f"localhost:{features.port}"
