"""Local certificates for TLS and mutual TLS: a CA, a server and a client certificate.

For local use and tests only (`make certs`, `python -m recsys.devcerts --out certs`): the CA key
sits next to what it signed. Writes into `out`:

    ca.crt ca.key            the local certificate authority (self-signed)
    server.crt server.key    for both services; names localhost, 127.0.0.1, ::1 and `hosts`
    client.crt client.key    for clients of servers that require mutual TLS
    token                    a random bearer token (one line), unless one is already there

Keys are ECDSA P-256, mode 0600. Uses the `openssl` command when it is on PATH, else the
`cryptography` package; `backend` forces one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["DEFAULT_HOSTS", "make_certs"]

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
DAYS = 365


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def make_certs(out: str | Path, hosts: Sequence[str] = (), *, backend: str = "auto") -> dict[str, Path]:
    """Writes the files listed in the module docstring into `out`; returns their paths by name."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = list(dict.fromkeys([*DEFAULT_HOSTS, *hosts]))
    if backend == "auto":
        backend = "openssl" if shutil.which("openssl") else "cryptography"
    if backend == "openssl":
        _with_openssl(out, names)
    elif backend == "cryptography":
        _with_cryptography(out, names)
    else:
        raise ValueError(f"backend must be auto, openssl or cryptography, got {backend!r}")
    paths = {f"{who}.{ext}": out / f"{who}.{ext}" for who in ("ca", "server", "client") for ext in ("crt", "key")}
    paths["token"] = out / "token"
    if not paths["token"].exists():
        paths["token"].write_text(secrets.token_urlsafe(32) + "\n")
    for name, path in paths.items():
        os.chmod(path, 0o600 if name.endswith(".key") or name == "token" else 0o644)
    return paths


def _with_openssl(out: Path, names: list[str]) -> None:
    san = ",".join(f"IP:{h}" if _is_ip(h) else f"DNS:{h}" for h in names)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        str(DAYS),
        "-subj",
        "/CN=recsys local CA",
        "-keyout",
        str(out / "ca.key"),
        "-out",
        str(out / "ca.crt"),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    with tempfile.TemporaryDirectory() as tmp:
        for who, cn, ext in (
            ("server", "recsys server", f"subjectAltName={san}\nextendedKeyUsage=serverAuth"),
            ("client", "recsys client", "extendedKeyUsage=clientAuth"),
        ):
            csr, extfile = Path(tmp) / f"{who}.csr", Path(tmp) / f"{who}.ext"
            extfile.write_text(f"basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n{ext}\n")
            run(
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                f"/CN={cn}",
                "-keyout",
                str(out / f"{who}.key"),
                "-out",
                str(csr),
            )
            run(
                "x509",
                "-req",
                "-in",
                str(csr),
                "-CA",
                str(out / "ca.crt"),
                "-CAkey",
                str(out / "ca.key"),
                "-CAcreateserial",
                "-CAserial",
                str(Path(tmp) / "ca.srl"),
                "-days",
                str(DAYS),
                "-extfile",
                str(extfile),
                "-out",
                str(out / f"{who}.crt"),
            )


def _with_cryptography(out: Path, names: list[str]) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)

    def key_pem(key) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def builder(cn: str, public_key, issuer: x509.Name) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=DAYS))
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "recsys local CA")])
    ca = (
        builder("recsys local CA", ca_key.public_key(), ca_name)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    (out / "ca.key").write_bytes(key_pem(ca_key))
    (out / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    san = x509.SubjectAlternativeName(
        [x509.IPAddress(ipaddress.ip_address(h)) if _is_ip(h) else x509.DNSName(h) for h in names]
    )
    for who, cn, usage, extra in (
        ("server", "recsys server", ExtendedKeyUsageOID.SERVER_AUTH, san),
        ("client", "recsys client", ExtendedKeyUsageOID.CLIENT_AUTH, None),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        b = (
            builder(cn, key.public_key(), ca.subject)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if extra is not None:
            b = b.add_extension(extra, critical=False)
        (out / f"{who}.key").write_bytes(key_pem(key))
        (out / f"{who}.crt").write_bytes(b.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="certs", help="directory (default: certs)")
    parser.add_argument("--host", action="append", default=[], help="another name or IP for the server certificate")
    parser.add_argument("--backend", default="auto", choices=["auto", "openssl", "cryptography"])
    args = parser.parse_args(argv)
    paths = make_certs(args.out, args.host, backend=args.backend)
    print(f"wrote {', '.join(sorted(paths))} to {args.out}/ (local use only: the CA key is beside them)")


if __name__ == "__main__":
    main()
