"""Fetch MovieLens-100K and write it as the three standard tables (see trainer.data.tables).

Sources, tried in order, every byte checked against a pinned sha256:
1. GroupLens, https://files.grouplens.org/datasets/movielens/ml-100k.zip (u.data/u.user/u.item).
2. The recbole==1.2.1 wheel on PyPI, which ships the same data as RecBole atomic files
   (recbole/dataset_example/ml-100k/ml-100k.{inter,user,item}); for networks that reach
   PyPI only.

Both go through trainer.data.tables.read_table, so they give the same columns. RecBole strips the
year from titles ("Toy Story"); we put it back ("Toy Story (1995)") so titles read as
GroupLens writes them and remakes stay distinguishable. Output, in `to_dir`:

    interactions.csv  user_id,item_id,timestamp,rating   (file order)
    users.csv         user_id,age,gender,occupation,zip_code
    items.csv         item_id,title,year,genres          (genres '|'-joined)
    .ml-100k.json     marker: source and the tables' sha256, written last
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tempfile
import time
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import pandas as pd

from recsys.artifact import ChecksumError
from trainer.data.tables import STANDARD_COLUMNS, read_table

__all__ = ["download_movielens_100k"]

log = logging.getLogger(__name__)

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
# Published by GroupLens as ml-100k.zip.md5 (0e33842e24a9c977be4e0107933c0723); the sha256
# is the one several independent projects pin for the same 4,924,029-byte archive.
GROUPLENS_ZIP_SHA256 = "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"

RECBOLE_VERSION = "1.2.1"
RECBOLE_WHEEL = f"recbole-{RECBOLE_VERSION}-py3-none-any.whl"
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
PYPI_JSON_URL = f"https://pypi.org/pypi/recbole/{RECBOLE_VERSION}/json"
PYPI_SIMPLE_URL = "https://pypi.org/simple/recbole/"
RECBOLE_MEMBER_DIR = "recbole/dataset_example/ml-100k/"
# Computed from the wheel above (itself pinned by PyPI's published sha256).
RECBOLE_FILE_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}
# RecBole spells item 267's title and year "unkonwn"; GroupLens has title "unknown", no date.
_RECBOLE_UNKNOWN = "unkonwn"

TABLE_FILES = {"interactions": "interactions.csv", "users": "users.csv", "items": "items.csv"}
MARKER = ".ml-100k.json"
SOURCE_GROUPLENS = "grouplens"
SOURCE_PYPI = f"pypi:recbole-{RECBOLE_VERSION}"


def download_movielens_100k(to_dir: str | Path, *, timeout_s: float = 10.0) -> dict[str, Any]:
    """Write MovieLens-100K's standard tables into `to_dir`; skip when already there.

    Returns {"source": "grouplens" | "pypi:recbole-1.2.1", "dir", "files" (table -> path),
    "sha256" (table -> digest), "interactions", "users", "items" (row counts), "cached"
    (True when nothing was downloaded), "seconds"}. Tables are written to temp files and
    moved into place, then the marker; a marker whose checksums match the tables means done.
    Raises RuntimeError naming every source tried and why it failed when none worked.
    `timeout_s` bounds each network read.
    """
    out = Path(to_dir)
    started = time.monotonic()
    cached = _cached(out)
    if cached is not None:
        return {
            **cached,
            "dir": str(out),
            "files": _paths(out),
            "cached": True,
            "seconds": round(time.monotonic() - started, 3),
        }
    failures: list[str] = []
    for source, fetch_tables in ((SOURCE_GROUPLENS, _grouplens_tables), (SOURCE_PYPI, _recbole_tables)):
        try:
            tables = fetch_tables(timeout_s)
        except (OSError, ValueError, zipfile.BadZipFile, KeyError, ChecksumError) as exc:
            # OSError covers URLError, HTTPError, timeouts and DNS failures.
            failures.append(f"{source}: {type(exc).__name__}: {exc}")
            log.warning("MovieLens-100K from %s failed: %s", source, exc)
            continue
        info = _write_tables(out, tables, source)
        return {
            **info,
            "dir": str(out),
            "files": _paths(out),
            "cached": False,
            "seconds": round(time.monotonic() - started, 3),
        }
    raise RuntimeError("could not download MovieLens-100K; tried:\n  " + "\n  ".join(failures))


def _fetch(url: str, timeout_s: float) -> bytes:
    """GET `url` (tests replace this to serve local bytes)."""
    request = urllib.request.Request(url, headers={"User-Agent": "recsys-trainer"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return response.read()


def _grouplens_tables(timeout_s: float) -> dict[str, pd.DataFrame]:
    archive = _fetch(GROUPLENS_URL, timeout_s)
    _check(archive, GROUPLENS_ZIP_SHA256, GROUPLENS_URL)
    members = {"u.data": "interactions", "u.user": "users", "u.item": "items"}
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        found = {Path(n).name: n for n in zf.namelist() if Path(n).name in members}
        lacking = sorted(set(members) - set(found))
        if lacking:
            raise KeyError(f"{GROUPLENS_URL} lacks {lacking}")
        raw = {name: zf.read(found[name]) for name in members}
    return _read_all({name: (data, members[name]) for name, data in raw.items()})


def _recbole_tables(timeout_s: float) -> dict[str, pd.DataFrame]:
    url, index_sha = _wheel_url(timeout_s)
    if index_sha and index_sha != RECBOLE_WHEEL_SHA256:
        raise ChecksumError(f"PyPI lists sha256 {index_sha} for {RECBOLE_WHEEL}, pinned {RECBOLE_WHEEL_SHA256}")
    wheel = _fetch(url, timeout_s)
    _check(wheel, RECBOLE_WHEEL_SHA256, url)
    kinds = {"ml-100k.inter": "interactions", "ml-100k.user": "users", "ml-100k.item": "items"}
    with zipfile.ZipFile(io.BytesIO(wheel)) as zf:
        raw = {name: zf.read(RECBOLE_MEMBER_DIR + name) for name in kinds}
    for name, data in raw.items():
        _check(data, RECBOLE_FILE_SHA256[name], f"{RECBOLE_WHEEL}:{RECBOLE_MEMBER_DIR}{name}")
    tables = _read_all({name: (data, kinds[name]) for name, data in raw.items()})
    tables["items"] = _readable_titles(tables["items"])
    return tables


def _wheel_url(timeout_s: float) -> tuple[str, str]:
    """(wheel URL, sha256 the index publishes) from PyPI's JSON API, else its simple index.

    Some proxies serve only the simple index (PEP 503), so both are tried.
    """
    try:
        release = json.loads(_fetch(PYPI_JSON_URL, timeout_s))
        for entry in release.get("urls", []):
            if entry.get("filename") == RECBOLE_WHEEL:
                return entry["url"], entry.get("digests", {}).get("sha256", "")
    except (OSError, ValueError) as exc:
        log.info("PyPI JSON API unavailable (%s); trying the simple index", exc)
    page = _fetch(PYPI_SIMPLE_URL, timeout_s).decode("utf-8", "replace")
    pattern = rf'href="([^"#]*{re.escape(RECBOLE_WHEEL)})(?:#sha256=([0-9a-f]{{64}}))?"'
    match = re.search(pattern, page)
    if match is None:
        raise ValueError(f"{RECBOLE_WHEEL} not listed at {PYPI_JSON_URL} or {PYPI_SIMPLE_URL}")
    return urllib.parse.urljoin(PYPI_SIMPLE_URL, match.group(1)), match.group(2) or ""


def _read_all(files: dict[str, tuple[bytes, str]]) -> dict[str, pd.DataFrame]:
    """read_table picks the format from the file name, so give each its original name."""
    with tempfile.TemporaryDirectory(prefix="ml-100k-") as tmp:
        tables = {}
        for name, (data, kind) in files.items():
            path = Path(tmp) / name
            path.write_bytes(data)
            tables[kind] = read_table(path, kind)
    return tables


def _readable_titles(items: pd.DataFrame) -> pd.DataFrame:
    """RecBole's "Toy Story" + year 1995 -> GroupLens's "Toy Story (1995)"."""
    items = items.copy()
    title = items["title"].where(items["title"] != _RECBOLE_UNKNOWN, "unknown")
    year = items["year"]
    suffix = year.map(lambda y: f" ({int(y)})" if pd.notna(y) else "")
    items["title"] = title + suffix  # a missing title stays missing
    return items


def _write_tables(out: Path, tables: dict[str, pd.DataFrame], source: str) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    # MovieLens has no optional columns (event kinds, weights): the standard ones it has
    frames = {
        kind: tables[kind][[c for c in STANDARD_COLUMNS[kind] if c in tables[kind].columns]].copy()
        for kind in TABLE_FILES
    }
    for kind, column in (("users", "age"), ("items", "year")):
        frames[kind][column] = _whole_numbers(frames[kind][column])
    digests = {}
    for kind, frame in frames.items():
        data = frame.to_csv(index=False, lineterminator="\n").encode("utf-8")
        digests[kind] = _sha256(data)
        _atomic_write(out / TABLE_FILES[kind], data)
    info = {"source": source, "sha256": digests, **{kind: len(frame) for kind, frame in frames.items()}}
    # Last: a marker exists only once every table it vouches for is in place.
    _atomic_write(out / MARKER, json.dumps(info, indent=2, sort_keys=True).encode())
    return info


def _whole_numbers(column: pd.Series) -> pd.Series:
    """1995.0 -> 1995 in the CSV, when every value is whole (missing stays empty)."""
    values = column.dropna()
    return column.astype("Int64") if (values == values.round()).all() else column


def _cached(out: Path) -> dict[str, Any] | None:
    """The marker's contents when every table on disk still matches it, else None."""
    try:
        info = json.loads((out / MARKER).read_text())
        for kind, name in TABLE_FILES.items():
            if _sha256((out / name).read_bytes()) != info["sha256"][kind]:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info


def _atomic_write(path: Path, data: bytes) -> None:
    """Readers see the old file or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these are plain data files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check(data: bytes, expected: str, what: str) -> None:
    actual = _sha256(data)
    if actual != expected:
        raise ChecksumError(f"{what}: sha256 {actual}, expected {expected}")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _paths(out: Path) -> dict[str, str]:
    return {kind: str(out / name) for kind, name in TABLE_FILES.items()}
