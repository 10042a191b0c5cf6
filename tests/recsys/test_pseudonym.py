"""Keyed pseudonymisation of user ids: the HMAC, the key file, training with it, serving with it,
and forgetting a user by raw id or pseudonym."""

from __future__ import annotations

import json
import os
import stat

import grpc
import pytest
from click.testing import CliRunner

from recsys.cli import main
from recsys.pseudonym import Pseudonymiser, read_key, write_key


def test_pseudonym_is_hmac_sha256_of_the_utf8_id():
    # RFC 4231 test case 6 (a key longer than the block size)
    p = Pseudonymiser(b"\xaa" * 131)
    assert p("Test Using Larger Than Block-Size Key - Hash Key First") == (
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
    )
    key = b"k" * 32
    assert Pseudonymiser(key)("196") == Pseudonymiser(key)("196") != Pseudonymiser(b"j" * 32)("196")
    assert Pseudonymiser(key)("196") != Pseudonymiser(key)("197")
    assert len(Pseudonymiser(key)("ü" * 300)) == 64  # any id -> 64 hex, within the 256-character id limit
    assert "k" * 32 not in repr(Pseudonymiser(key)) and Pseudonymiser(key).describe()["scheme"] == "hmac-sha256"


def test_key_files(tmp_path):
    path = tmp_path / "key"
    write_key(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(read_key(path)) == 64
    with pytest.raises(FileExistsError):
        write_key(path)
    (tmp_path / "short").write_text("too short\n")
    with pytest.raises(ValueError, match="at least 32"):
        read_key(tmp_path / "short")
    with pytest.raises(ValueError, match="missing"):
        read_key(tmp_path / "missing")
    with pytest.raises(ValueError):
        Pseudonymiser(b"short")


def test_cli_keygen_and_map(tmp_path):
    runner = CliRunner()
    out = runner.invoke(main, ["pseudonym", "keygen", "--out", str(tmp_path / "key")])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["key_id"] == Pseudonymiser.from_file(tmp_path / "key").key_id
    again = runner.invoke(main, ["pseudonym", "keygen", "--out", str(tmp_path / "key")])
    assert again.exit_code != 0 and "not overwriting" in again.output
    mapped = runner.invoke(main, ["pseudonym", "map", "--key", str(tmp_path / "key"), "u001", "u002"])
    rows = [json.loads(line) for line in mapped.output.splitlines()]
    p = Pseudonymiser.from_file(tmp_path / "key")
    assert rows == [{"user_id": "u001", "pseudonym": p("u001")}, {"user_id": "u002", "pseudonym": p("u002")}]


@pytest.fixture(scope="module")
def pseudonymised(ring_data, tmp_path_factory):
    from trainer.families.next_item import TrainConfig
    from trainer.pipeline import train_and_export

    root = tmp_path_factory.mktemp("pseudo")
    key = root / "key"
    write_key(key)
    (root / "forget.jsonl").write_text(json.dumps({"user_id": "u003"}) + "\n")  # a raw id
    cfg = TrainConfig(epochs=1, batch_size=64, max_len=10, hidden=16, heads=1, layers=1, inner=32, eval_every=1)
    train_and_export(
        ring_data["train"],
        root / "artifact",
        cfg,
        users=ring_data["users"],
        items=ring_data["items"],
        progress=False,
        log=lambda *_: None,
        pseudonymise_key=key,
        forget_users=root / "forget.jsonl",
    )
    return root / "artifact", key


def test_artifact_holds_pseudonyms_only_and_not_the_key(pseudonymised):
    artifact, key = pseudonymised
    p = Pseudonymiser.from_file(key)
    texts = {f.name: f.read_text(errors="replace") for f in artifact.iterdir() if f.is_file() and f.suffix != ".onnx"}
    blob = "\n".join(texts.values()) + (artifact / "model.onnx").read_bytes().decode("latin-1")
    assert "u001" not in blob and "u079" not in blob
    assert read_key(key).decode() not in blob
    assert p("u001") in texts["histories.jsonl"] and p("u001") in texts["users.jsonl"]
    assert p("u003") not in blob  # forgotten by raw id
    manifest = json.loads(texts["manifest.json"])
    assert manifest["training"]["pseudonymised"] == {"scheme": "hmac-sha256", "key_id": p.key_id}


def test_serving_works_through_the_pseudonym(pseudonymised):
    from feature_service.server import create_feature_server
    from inference_server.server import create_inference_server
    from recsys.v1 import inference_pb2, inference_pb2_grpc

    artifact, key = pseudonymised
    fserver, fport, _, fcore = create_feature_server(artifact, "memory://")
    iserver, iport, _, rec = create_inference_server(artifact, f"localhost:{fport}")
    try:
        with grpc.insecure_channel(f"localhost:{iport}") as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)

            def source(user):
                return stub.Recommend(inference_pb2.RecommendRequest(user_id=user, k=3), timeout=5).source

            p = Pseudonymiser.from_file(key)
            assert source(p("u001")) == inference_pb2.SOURCE_MODEL
            assert source("u001") == inference_pb2.SOURCE_POPULARITY  # the raw id is unknown to the store
            assert source(p("u003")) == inference_pb2.SOURCE_POPULARITY  # forgotten before training
            out = CliRunner().invoke(
                main,
                [
                    "recommend",
                    "--server",
                    f"localhost:{iport}",
                    "--user",
                    "u001",
                    "--k",
                    "3",
                    "--pseudonymise-key",
                    str(key),
                ],
            )
            assert out.exit_code == 0 and "from model" in out.output, out.output
    finally:
        iserver.stop(None)
        fserver.stop(None)
        rec.features.close()
        fcore.close()


def test_forget_by_raw_id_leaves_a_pseudonymous_tombstone(pseudonymised, tmp_path):
    artifact, key = pseudonymised
    store = f"sqlite://{tmp_path / 'store.sqlite'}"
    runner = CliRunner()
    assert runner.invoke(main, ["features", "load", "--artifact", str(artifact), "--store", store]).exit_code == 0
    out = runner.invoke(main, ["features", "forget", "--store", store, "--pseudonymise-key", str(key), "u001"])
    assert out.exit_code == 0, out.output
    p = Pseudonymiser.from_file(key)
    assert json.loads(out.output) == {"user_id": "u001", "pseudonym": p("u001"), "found": True}
    listed = runner.invoke(main, ["features", "forgotten", "--store", store, "--out", str(tmp_path / "gone.jsonl")])
    assert listed.exit_code == 0, listed.output
    gone = [json.loads(line)["user_id"] for line in (tmp_path / "gone.jsonl").read_text().splitlines()]
    assert gone == [p("u001")]  # the store never saw the raw id
