"""The shared package: generated code is fresh, servers stay torch-free, config and atomic writes."""

from __future__ import annotations

import filecmp
import importlib.metadata
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from recsys.artifact import write_atomically
from recsys.config import load_config
from recsys.protogen import ROOT, generate


def locked_versions(name: str) -> set[str]:
    """The versions of `name` that requirements/*.lock pin (one per lock)."""
    pin = re.compile(rf"^{re.escape(name)}==(\S+)$", re.MULTILINE)
    return {v for lock in sorted((ROOT / "requirements").glob("*.lock")) for v in pin.findall(lock.read_text())}


def test_generated_stubs_match_the_protos(tmp_path):
    # the stubs embed the generator's version (GRPC_GENERATED_VERSION) and refuse an older grpcio:
    # generator and runtime are the one version the locks pin, and this run's generator is that one
    tools, runtime = locked_versions("grpcio-tools"), locked_versions("grpcio")
    assert len(tools) == 1 and tools == runtime, f"the locks pin grpcio {runtime} and grpcio-tools {tools}"
    installed = importlib.metadata.version("grpcio-tools")
    assert {installed} == tools, f"grpcio-tools {installed} is installed, the locks pin {tools}: run `make setup`"
    written = generate(tmp_path)
    assert written, "protoc wrote nothing"
    for path in written:
        committed = ROOT / "recsys" / "v1" / path.name
        assert committed.exists() and filecmp.cmp(path, committed, shallow=False), (
            f"recsys/v1/{path.name} is stale: run `make proto`"
        )


@pytest.mark.parametrize(
    "module",
    [
        "inference_server.server",
        "feature_service.server",
        "recsys.cli",
        "recsys.client",
        "recsys.security",
        "inference_server.config",
        "feature_service.config",
    ],
)
def test_serving_code_does_not_import_torch(module):
    code = f"import sys, {module}; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0, f"{module} pulls in torch"


def test_cli_help_is_lazy():
    # `recsys --help` and each group's help load the command modules (recsys/cli/*.py), nothing behind them
    code = (
        "import sys; from click.testing import CliRunner; from recsys.cli import main;"
        "groups = [[], ['data'], ['serve'], ['features'], ['model'], ['pseudonym']];"
        "results = [CliRunner().invoke(main, [*g, '--help']) for g in groups];"
        "assert all(r.exit_code == 0 for r in results), [r.output for r in results];"
        "heavy = [m for m in ('torch', 'onnxruntime', 'pandas', 'grpc') if m in sys.modules];"
        "sys.exit(1 if heavy else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@dataclass(frozen=True)
class Example:
    epochs: int = 10
    lr: float = 0.1
    name: str = "a"
    fast: bool = False
    parts: tuple = ()


def test_config_precedence_defaults_file_environment_flags(tmp_path, monkeypatch):
    path = tmp_path / "c.toml"
    path.write_text('epochs = 20\nlr = 0.5\nname = "file"\n')
    monkeypatch.setenv("T_LR", "0.25")
    monkeypatch.setenv("T_FAST", "yes")
    cfg = load_config(Example, file=path, env_prefix="T_", overrides={"name": "flag", "epochs": None})
    assert cfg == Example(epochs=20, lr=0.25, name="flag", fast=True)


def test_config_rejects_unknown_fields_and_bad_types(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"epoch": 3}))
    with pytest.raises(ValueError, match="unknown config field.*epoch"):
        load_config(Example, file=path)
    with pytest.raises(ValueError, match="expected an integer"):
        load_config(Example, overrides={"epochs": "many"})


def test_config_list_fields_from_a_file_or_json_in_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "c.toml"
    path.write_text('[[parts]]\nmodel = "a"\n[[parts]]\nmodel = "b"\n')
    assert load_config(Example, file=path).parts == ({"model": "a"}, {"model": "b"})
    monkeypatch.setenv("T_PARTS", '[{"model": "c"}]')
    assert load_config(Example, file=path, env_prefix="T_").parts == ({"model": "c"},)
    monkeypatch.setenv("T_PARTS", "purchase, cart")  # names, comma-separated
    assert load_config(Example, env_prefix="T_").parts == ("purchase", "cart")
    monkeypatch.setenv("T_PARTS", '[{"model": "c"')
    with pytest.raises(ValueError, match="expected a JSON list"):
        load_config(Example, env_prefix="T_")


def test_atomic_write_replaces_whole_or_leaves_old(tmp_path):
    target = tmp_path / "artifact"
    write_atomically(target, lambda d: (d / "a.txt").write_text("one"))
    assert (target / "a.txt").read_text() == "one"

    def broken(d: Path) -> None:
        (d / "a.txt").write_text("half")
        raise RuntimeError("export failed")

    with pytest.raises(RuntimeError):
        write_atomically(target, broken)
    assert (target / "a.txt").read_text() == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]  # no temporary left behind

    write_atomically(target, lambda d: (d / "b.txt").write_text("two"))
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
