"""What the SQLite store leaves on disk: a forgotten user's data is gone from the database file
and its WAL (read as raw bytes), and the files are readable by their owner only."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from feature_service.stores import SqliteStore, open_store
from feature_service.stores.base import Event

MARKER = "personal-marker-7f3a9c"


def on_disk(path: Path) -> bytes:
    """The database file and its WAL, byte for byte (what a copy of the disk would show)."""
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())


@pytest.fixture(params=[0o022, 0o277], ids=["umask022", "umask277"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def fill(store: SqliteStore) -> None:
    """Other users and items around the victim, so its rows share pages with data that stays."""
    store.put_users([(f"u{n}", {"note": f"someone else {n}"}) for n in range(200)])
    store.put_items([(f"i{n}", {"title": f"title {n}"}) for n in range(200)])
    store.append_events([Event(f"u{n}", f"i{n}", n) for n in range(200)])


def test_forgotten_user_leaves_no_copy_in_the_file_or_its_wal(tmp_path: Path) -> None:
    path = tmp_path / "features.db"
    with SqliteStore(path) as store:
        fill(store)
        store.put_users([("victim", {"note": f"{MARKER} v1"})])
        store.put_users([("victim", {"note": f"{MARKER} v2 " + "x" * 5000})])  # a replaced row, and an overflow page
        store.append_events([Event("victim", "i1", 10, f"{MARKER}-event"), Event("victim", "i2", 20)])
        assert MARKER.encode() in on_disk(path)
        assert store.forget_user("victim")
        assert MARKER.encode() not in on_disk(path)  # while the store is still open, as a server keeps it
        assert store.get_users(["u1"], 10)[0].features == {"note": "someone else 1"}  # the rest is intact
    assert MARKER.encode() not in on_disk(path)


def test_clear_leaves_no_copy(tmp_path: Path) -> None:
    path = tmp_path / "features.db"
    with SqliteStore(path) as store:
        fill(store)
        store.put_users([("victim", {"note": MARKER})])
        store.set_meta("k", MARKER)
        store.clear()
        assert MARKER.encode() not in on_disk(path)
        assert b"someone else" not in on_disk(path)


@pytest.mark.usefixtures("umask")
def test_store_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "features.db"  # an existing directory: a new one would take the umask too
    with open_store(f"sqlite://{path}") as store:
        store.put_users([("u1", {"age": 1})])
        files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
        assert all(p.exists() for p in files)
        assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: "0o600" for p in files}


def test_an_existing_readable_file_is_warned_about_and_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "features.db"
    SqliteStore(path).close()
    path.chmod(0o640)  # the operator's choice (a backup group, say): kept, but said out loud
    with caplog.at_level(logging.WARNING, logger="feature_service.stores.sqlite"):
        SqliteStore(path).close()
    assert "readable by other users" in caplog.text and stat.S_IMODE(path.stat().st_mode) == 0o640
    caplog.clear()
    path.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="feature_service.stores.sqlite"):
        SqliteStore(path).close()
    assert caplog.text == ""
