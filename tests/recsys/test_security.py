"""TLS, mutual TLS and token authentication on real servers, with certificates made here."""

from __future__ import annotations

import shutil
from contextlib import contextmanager

import grpc
import pytest
from click.testing import CliRunner
from grpc_health.v1 import health_pb2, health_pb2_grpc

from feature_service.server import create_feature_server
from recsys.devcerts import make_certs
from recsys.security import (
    AUTH_TOKENS_ENV,
    ClientSecurity,
    ClientTls,
    ServerSecurity,
    ServerTls,
    TokenAuthInterceptor,
    open_channel,
    read_token,
    read_tokens,
)
from recsys.v1 import features_pb2, features_pb2_grpc

TOKEN = "s3cret-Token_for.tests~1"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"), backend="cryptography")


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("other-certs"), backend="cryptography")


@contextmanager
def feature_server(artifact, security):
    server, port, _, core = create_feature_server(artifact, "memory://", security=security)
    try:
        yield f"localhost:{port}"
    finally:
        server.stop(None)
        core.close()


def get_schema(target, security=None):
    with open_channel(target, security) as channel:
        return features_pb2_grpc.FeatureServiceStub(channel).GetSchema(features_pb2.GetSchemaRequest(), timeout=5)


def failure(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def tls(certs) -> ServerTls:
    return ServerTls(certs["server.crt"], certs["server.key"])


def test_tls_serves_tls_clients_only(trained_artifact, certs, other_certs):
    with feature_server(trained_artifact, ServerSecurity(tls=tls(certs))) as target:
        assert get_schema(target, ClientSecurity(tls=ClientTls(ca=certs["ca.crt"]))).schema_hash
        assert failure(lambda: get_schema(target)).code() == grpc.StatusCode.UNAVAILABLE  # plaintext client
        # A client that trusts another CA refuses the server's certificate.
        wrong_ca = ClientSecurity(tls=ClientTls(ca=other_certs["ca.crt"]))
        assert failure(lambda: get_schema(target, wrong_ca)).code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate_from_the_ca(trained_artifact, certs, other_certs):
    server_tls = ServerTls(certs["server.crt"], certs["server.key"], client_ca=certs["ca.crt"])
    with feature_server(trained_artifact, ServerSecurity(tls=server_tls)) as target:
        with_cert = ClientTls(ca=certs["ca.crt"], cert=certs["client.crt"], key=certs["client.key"])
        assert get_schema(target, ClientSecurity(tls=with_cert)).schema_hash
        without_cert = ClientSecurity(tls=ClientTls(ca=certs["ca.crt"]))
        assert failure(lambda: get_schema(target, without_cert)).code() == grpc.StatusCode.UNAVAILABLE
        foreign = ClientTls(ca=certs["ca.crt"], cert=other_certs["client.crt"], key=other_certs["client.key"])
        assert failure(lambda: get_schema(target, ClientSecurity(tls=foreign))).code() == grpc.StatusCode.UNAVAILABLE


def test_token_auth_refuses_missing_and_wrong_tokens_but_leaves_health_open(trained_artifact, certs):
    security = ServerSecurity(tls=tls(certs), tokens=frozenset({TOKEN, "second-token"}))
    ca = ClientTls(ca=certs["ca.crt"])
    with feature_server(trained_artifact, security) as target:
        for sent in (None, "wrong", TOKEN + "x"):
            error = failure(lambda sent=sent: get_schema(target, ClientSecurity(tls=ca, token=sent)))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert TOKEN not in error.details()
        assert get_schema(target, ClientSecurity(tls=ca, token=TOKEN)).schema_hash
        assert get_schema(target, ClientSecurity(tls=ca, token="second-token")).schema_hash  # rotation: both accepted
        with open_channel(target, ClientSecurity(tls=ca)) as channel:
            # Another scheme than Bearer is no token either.
            stub = features_pb2_grpc.FeatureServiceStub(channel)

            def call():
                return stub.GetSchema(features_pb2.GetSchemaRequest(), metadata=[("authorization", f"Basic {TOKEN}")])

            assert failure(call).code() == grpc.StatusCode.UNAUTHENTICATED
            # Health answers without a token; server reflection (a streaming RPC) does not.
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

            replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
            assert failure(lambda: list(replies)).code() == grpc.StatusCode.UNAUTHENTICATED


def test_inference_server_over_mutual_tls_with_tokens_end_to_end(trained_artifact, certs, tmp_path, monkeypatch):
    from inference_server.server import create_inference_server
    from recsys.cli import main

    feature_tls = ServerTls(certs["server.crt"], certs["server.key"], client_ca=certs["ca.crt"])
    client_tls = ClientTls(ca=certs["ca.crt"], cert=certs["client.crt"], key=certs["client.key"])
    with feature_server(
        trained_artifact, ServerSecurity(tls=feature_tls, tokens=frozenset({"feature-token"}))
    ) as ftarget:
        server, port, health, recommender = create_inference_server(
            trained_artifact,
            ftarget,
            security=ServerSecurity(tls=tls(certs), tokens=frozenset({TOKEN})),
            feature_security=ClientSecurity(tls=client_tls, token="feature-token"),
        )
        try:
            assert recommender.features.contract().user  # asked over mTLS with a token
            token_file = tmp_path / "token"
            token_file.write_text(f"# the client's token\n{TOKEN}\n")
            base = [
                "recommend",
                "--server",
                f"localhost:{port}",
                "--user",
                "u000",
                "--k",
                "3",
                "--tls-ca",
                str(certs["ca.crt"]),
            ]
            result = CliRunner().invoke(main, [*base, "--token-file", str(token_file)])
            assert result.exit_code == 0, result.output
            assert "top 3 for user u000" in result.output
            monkeypatch.setenv("RECSYS_TOKEN", TOKEN)
            assert CliRunner().invoke(main, base).exit_code == 0
            monkeypatch.setenv("RECSYS_TOKEN", "not-the-token")
            result = CliRunner().invoke(main, base)
            assert result.exit_code != 0 and "UNAUTHENTICATED" in result.output
            assert "not-the-token" not in result.output
        finally:
            server.stop(None)
            recommender.features.close()

    # The same feature service with a token the inference server does not have: it reports why.
    with feature_server(trained_artifact, ServerSecurity(tls=feature_tls, tokens=frozenset({"other"}))) as ftarget:
        server, port, health, recommender = create_inference_server(
            trained_artifact,
            ftarget,
            feature_security=ClientSecurity(tls=client_tls, token="feature-token"),
        )
        try:
            with pytest.raises(Exception, match="refused this server's credentials"):
                recommender.features.contract()
        finally:
            server.stop(None)
            recommender.features.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not installed")
def test_openssl_certificates_work_too(trained_artifact, tmp_path):
    certs = make_certs(tmp_path / "certs", backend="openssl")
    server_tls = ServerTls(certs["server.crt"], certs["server.key"], client_ca=certs["ca.crt"])
    with feature_server(trained_artifact, ServerSecurity(tls=server_tls)) as target:
        client = ClientTls(ca=certs["ca.crt"], cert=certs["client.crt"], key=certs["client.key"])
        assert get_schema(target, ClientSecurity(tls=client)).schema_hash


def test_tokens_from_file_and_environment(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("# rotation: old and new\nold-token\n\n  new-token  \n")
    assert read_tokens(path, env={}) == {"old-token", "new-token"}
    assert read_tokens(None, env={AUTH_TOKENS_ENV: "a, b"}) == {"a", "b"}
    assert read_tokens(None, env={}) == frozenset()  # authentication off
    assert read_token(None, None) is None and read_token(None, " tok ") == "tok"
    path.write_text("# nothing but a comment\n")
    with pytest.raises(ValueError, match="holds no token"):
        read_tokens(path, env={})
    with pytest.raises(ValueError, match="holds no token"):
        read_tokens(None, env={AUTH_TOKENS_ENV: " , "})
    path.write_text("has space inside\n")
    with pytest.raises(ValueError) as info:
        read_tokens(path, env={})
    assert "space inside" not in str(info.value)  # never echo a secret
    path.write_text("one\ntwo\n")
    with pytest.raises(ValueError, match="a client sends one"):
        read_token(path)
    with pytest.raises(ValueError, match="at least one token"):
        TokenAuthInterceptor([])


def test_secrets_stay_out_of_reprs_and_descriptions(certs):
    security = ServerSecurity(tls=tls(certs), tokens=frozenset({TOKEN}))
    assert TOKEN not in repr(security) and TOKEN not in security.describe()
    assert security.describe() == "TLS, token auth (1 tokens)"
    assert TOKEN not in repr(ClientSecurity(token=TOKEN))


def test_unreadable_or_non_pem_files_are_refused_before_binding(trained_artifact, certs, tmp_path):
    not_pem = tmp_path / "cert.txt"
    not_pem.write_text("hello")
    with pytest.raises(ValueError, match="is not a PEM file"):
        create_feature_server(
            trained_artifact, "memory://", security=ServerSecurity(tls=ServerTls(not_pem, certs["server.key"]))
        )
    with pytest.raises(ValueError, match="cannot read TLS key"):
        create_feature_server(
            trained_artifact,
            "memory://",
            security=ServerSecurity(tls=ServerTls(certs["server.crt"], tmp_path / "missing.key")),
        )


def test_cli_checks_tls_flags_before_serving(trained_artifact, certs):
    from recsys.cli import main

    result = CliRunner().invoke(
        main,
        [
            "serve",
            "features",
            "--artifact",
            str(trained_artifact),
            "--store",
            "memory://",
            "--tls-cert",
            str(certs["server.crt"]),
        ],
    )
    assert result.exit_code != 0 and "--tls-cert and --tls-key go together" in result.output
    result = CliRunner().invoke(main, ["recommend", "--user", "u", "--tls-cert", str(certs["client.crt"])])
    assert result.exit_code != 0 and "go together" in result.output


def test_serve_features_command_with_tls_and_tokens_from_the_environment(trained_artifact, certs):
    import os
    import signal
    import subprocess
    import sys

    env = {**os.environ, "PYTHONUNBUFFERED": "1", AUTH_TOKENS_ENV: f"{TOKEN},another"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "recsys.cli",
            "serve",
            "features",
            "--artifact",
            str(trained_artifact),
            "--store",
            "memory://",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--verbose",
            "--tls-cert",
            str(certs["server.crt"]),
            "--tls-key",
            str(certs["server.key"]),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "listening on" in line:
                break
        port = int(lines[-1].split("(")[0].rsplit(":", 1)[1])
        ca = ClientTls(ca=certs["ca.crt"])
        # 127.0.0.1 is among the server certificate's names.
        assert get_schema(f"127.0.0.1:{port}", ClientSecurity(tls=ca, token=TOKEN)).schema_hash
        error = failure(lambda: get_schema(f"127.0.0.1:{port}", ClientSecurity(tls=ca, token="nope")))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        proc.send_signal(signal.SIGTERM)
        logs = "".join(lines) + proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, logs
    assert "TLS, token auth (2 tokens)" in logs and TOKEN not in logs and "another" not in logs


def test_unauthenticated_bytes_are_refused_before_they_are_parsed(trained_artifact):
    with (
        feature_server(trained_artifact, ServerSecurity(tokens=frozenset({TOKEN}))) as target,
        grpc.insecure_channel(target) as channel,
    ):
        call = channel.unary_unary("/recsys.v1.FeatureService/ForgetUser")
        assert failure(lambda: call(b"\x0a\x02\xff\xfe", timeout=5)).code() == grpc.StatusCode.UNAUTHENTICATED
        assert (
            failure(
                lambda: call(b"\x0a\x02\xff\xfe", timeout=5, metadata=[("authorization", f"Bearer {TOKEN}")])
            ).code()
            == grpc.StatusCode.INVALID_ARGUMENT
        )


def test_a_token_in_clear_is_warned_about_once_per_target(caplog):
    """A client opening several channels to one target (a pool) warns once, not per channel."""
    target = "127.0.0.1:1"  # never dialled: channels connect lazily
    security = ClientSecurity(token="tok")
    with caplog.at_level("WARNING", logger="recsys.security"):
        channels = [open_channel(target, security) for _ in range(3)]
        channels.append(open_channel("127.0.0.1:2", security))
    for channel in channels:
        channel.close()
    warned = [r.getMessage() for r in caplog.records if "without TLS" in r.getMessage()]
    assert warned == [
        "sending a token to 127.0.0.1:1 without TLS: anyone on the path can read it",
        "sending a token to 127.0.0.1:2 without TLS: anyone on the path can read it",
    ]
