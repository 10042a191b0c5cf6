"""A versioned model repository and the hot swap of the model a server is serving.

Layout (Triton's convention)::

    <repo>/<model>/<version>/     one artifact directory per version (manifest.json, model.onnx, ...)
    <repo>/<model>/.publish-*     a version being copied in; never read

Versions are positive integers; a directory whose name is not one is ignored. `publish` copies
an artifact into a hidden sibling directory, flushes it, then renames it to the next free
version number, so a reader sees a version either complete or not at all; two publishers racing
for one number both succeed, one of them with the next number.

`ModelManager` holds what a server serves (`current`, read once per request, so a swap never
splits a request between two models) and changes it only after the new version passed every
check beside the old one:

1. it loads: checksums of its files, ONNX Runtime session on the server's device, item index
   against the manifest, warm-up run with the output shape the manifest states;
2. its feature schema hash is the one the feature service serves (when the feature service
   cannot be asked, only the hash of the version being served is accepted);
3. output sanity on a sample: scores for up to `SAMPLE_USERS` histories from the artifact (or
   for a block of candidates, for feature-based rankers) are finite and not all equal.

A version that fails is rejected with one log line (ERROR) naming the reason, the old version
keeps serving, and the watcher does not try it again (one that failed only because the feature
service could not be asked is tried again on the next round). Version policy: `latest` follows
the newest version as it appears (`poll`, run every `watch_interval_s` by `start_watch`);
`pinned` serves one version until told otherwise. `load_version(n)` pins version n and
`load_version(None)` returns to `latest`; `rollback()` pins the version served before the
current one. Versions already rejected are skipped by `latest` and retried only when asked
for by number. Without a repository (a plain `--artifact` directory) the manager serves that
directory and has no versions to swap to.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from inference_server.feature_client import FeatureClient, UserView
from inference_server.pipeline import Recommender
from recsys.artifact import HISTORIES, fsync_dir, read_jsonl, read_manifest, verify_files
from recsys.errors import FailedPrecondition, InvalidArgument, NotFound, RecsysError, Unavailable
from recsys.schema import FIRST_TOKEN

__all__ = ["POLICIES", "SAMPLE_USERS", "ModelManager", "ModelRepository", "ServedModel"]

log = logging.getLogger(__name__)

POLICIES = ("latest", "pinned")
SAMPLE_USERS = 16
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class ModelRepository:
    """`<root>/<model>/<version>/` artifact directories (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, model: str, version: int) -> Path:
        return self.root / _check_name(model) / str(version)

    def versions(self, model: str) -> list[int]:
        """The model's version numbers, ascending; [] when it has none (or does not exist)."""
        directory = self.root / _check_name(model)
        if not directory.is_dir():
            return []
        return sorted(
            int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit() and not p.name.startswith("0")
        )

    def latest(self, model: str) -> int | None:
        versions = self.versions(model)
        return versions[-1] if versions else None

    def publish(self, artifact_dir: str | Path, model: str | None = None) -> int:
        """Copies a checked artifact in as the model's next version; returns its number.

        `model` defaults to the artifact's model kind (e.g. "sasrec"). Raises
        `FailedPrecondition` for a directory that is not a complete artifact.
        """
        manifest = read_manifest(artifact_dir)
        verify_files(artifact_dir, manifest)
        model_dir = self.root / _check_name(model or manifest.model_kind)
        model_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".publish-", dir=model_dir))
        try:
            shutil.copytree(artifact_dir, tmp, dirs_exist_ok=True)
            for child in tmp.rglob("*"):
                if child.is_file():
                    with open(child, "rb") as f:
                        os.fsync(f.fileno())
            fsync_dir(tmp)
            for attempt in itertools.count():
                version = (self.latest(model_dir.name) or 0) + 1
                try:
                    os.rename(tmp, model_dir / str(version))  # fails if another publisher took it
                    break
                except OSError:
                    if attempt >= 100 or not (model_dir / str(version)).exists():
                        raise
            fsync_dir(model_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return version


def _check_name(model: str) -> str:
    if not _MODEL_NAME.match(model or ""):
        raise InvalidArgument(f"model name {model!r}: use letters, digits, '_', '.', '-' (at most 128)")
    return model


@dataclass(frozen=True)
class ServedModel:
    recommender: Recommender
    path: Path
    version: int | None  # repository version; None for a plain artifact directory
    label: str  # what every response names: "<model>/<version>:<model_version>" from a repository
    loaded_at: float = field(default_factory=time.time)


class ModelManager:
    """Serves one model, swapping versions after checks (see the module docstring).

    `build(path)` opens an artifact directory as a warmed-up `Recommender` (raising on any
    problem); `features` is the feature client every version shares. A swapped-out version's
    sessions are closed `retire_after_s` seconds after the swap (calls are over by then: each is
    bounded by the server's timeouts).
    """

    def __init__(
        self,
        build: Callable[[Path], Recommender],
        features: FeatureClient,
        *,
        artifact_dir: str | Path | None = None,
        repository: ModelRepository | None = None,
        model: str | None = None,
        version: int | None = None,
        on_change: Callable[[ServedModel], None] | None = None,
        on_reject: Callable[[int, str], None] | None = None,
        retire_after_s: float = 30.0,
    ) -> None:
        if (artifact_dir is None) == (repository is None):
            raise ValueError("give an artifact directory or a repository, not both")
        if repository is not None and not model:
            raise ValueError("a repository needs a model name")
        self.build = build
        self.features = features
        self.repository = repository
        self.model = model
        self.policy = "latest" if version is None else "pinned"
        self.rejected: dict[int, str] = {}
        self.history: list[int] = []  # versions served before the current one, oldest first
        self.on_change = on_change
        self.on_reject = on_reject
        self.retire_after_s = retire_after_s
        self._lock = threading.RLock()  # one change of version at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if repository is None:
            path = Path(artifact_dir)
            recommender = build(path)
            self.current = ServedModel(recommender, path, None, recommender.model_version)
        else:
            # Pinned: that version or nothing. Latest: the newest version that passes its checks.
            choices = [version] if version is not None else repository.versions(model)[::-1]
            if not choices:
                raise FailedPrecondition(f"model repository {repository.root} has no versions of model {model!r}")
            if version is not None and version not in repository.versions(model):
                raise NotFound(f"model {model!r} has no version {version} in {repository.root}")
            for i, chosen in enumerate(choices):
                try:
                    self.current = self._load(chosen, first=True)
                    break
                except FailedPrecondition:
                    if i == len(choices) - 1:
                        raise
        if on_change is not None:
            on_change(self.current)

    # -- changing versions ---------------------------------------------------------------

    def poll(self) -> ServedModel | None:
        """Under `latest`: swaps to the newest version not yet rejected if it is not the one
        served; returns the new model, or None when nothing changed (or it was rejected)."""
        if self.repository is None:
            return None
        with self._lock:  # an admin call pinning a version meanwhile waits, and then wins
            if self.policy != "latest":
                return None
            candidates = [v for v in self.repository.versions(self.model) if v not in self.rejected]
            if not candidates or candidates[-1] == self.current.version:
                return None
            try:
                return self._swap(candidates[-1])
            except RecsysError:
                return None

    def load_version(self, version: int | None) -> ServedModel:
        """Pins `version` (or, for None, follows `latest` again) and serves it now. Raises
        `NotFound` for a version the repository lacks and `FailedPrecondition` when it fails a
        check (the served version stays)."""
        self._need_repository()
        if version is not None and version < 1:
            raise InvalidArgument(f"model versions are positive integers, got {version}")
        with self._lock:
            return self._load_version(version)

    def _load_version(self, version: int | None) -> ServedModel:
        if version is None:  # the newest version that passes, as the watcher would pick it
            self.policy = "latest"
            for candidate in reversed(self.repository.versions(self.model)):
                if candidate == self.current.version:
                    return self.current
                if candidate not in self.rejected:
                    try:
                        return self._swap(candidate)
                    except FailedPrecondition:
                        continue
            return self.current
        if version not in self.repository.versions(self.model):
            raise NotFound(f"model {self.model!r} has no version {version} in {self.repository.root}")
        self.rejected.pop(version, None)
        served = self.current if version == self.current.version else self._swap(version)
        self.policy = "pinned"
        return served

    def rollback(self, version: int | None = None) -> ServedModel:
        """Pins the version served before the current one (or `version`) and serves it."""
        self._need_repository()
        with self._lock:
            if version is None:
                previous = [v for v in self.history if v != self.current.version]
                if not previous:
                    raise FailedPrecondition(
                        f"no earlier version of {self.model!r} was served: nothing to roll back to"
                    )
                version = previous[-1]
            return self.load_version(version)

    def status(self) -> dict:
        versions = self.repository.versions(self.model) if self.repository is not None else []
        return {
            "model": self.model or "",
            "policy": self.policy if self.repository is not None else "artifact",
            "serving_version": self.current.version or 0,
            "label": self.current.label,
            "path": str(self.current.path),
            "versions": versions,
            "rejected": dict(self.rejected),
        }

    # -- watching ------------------------------------------------------------------------

    def start_watch(self, interval_s: float) -> None:
        """Polls the repository every `interval_s` seconds on a daemon thread until `stop()`."""
        if self.repository is None or interval_s <= 0 or self._thread is not None:
            return

        def run() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.poll()
                except Exception:  # keep watching whatever one round hit
                    log.exception("model repository watch round failed")

        self._thread = threading.Thread(target=run, name="model-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    # -- internals -----------------------------------------------------------------------

    def _need_repository(self) -> None:
        if self.repository is None:
            raise FailedPrecondition(
                "this server serves a plain artifact directory, not a model repository "
                "(start it with --repo and --model to change versions)"
            )

    def _swap(self, version: int) -> ServedModel:
        with self._lock:
            if version == self.current.version:
                return self.current
            old = self.current
            served = self._load(version, first=False)
            self.features.expected_schema_hash = served.recommender.manifest.schema_hash
            self.current = served  # one reference assignment: requests see the old or the new model
            if old.version is not None:
                self.history.append(old.version)
            log.info("model %s: now serving version %d (%s), was %s", self.model, version, served.label, old.label)
            if self.on_change is not None:
                self.on_change(served)
            _retire(old.recommender, self.retire_after_s)
            return served

    def _load(self, version: int, *, first: bool) -> ServedModel:
        path = self.repository.path(self.model, version)
        try:
            recommender = self.build(path)
            if not first:  # at startup the health watch reports a mismatch (NOT_SERVING) instead
                self._check_schema(recommender)
            _check_outputs(recommender, path)
        except Unavailable as exc:
            log.warning("model %s version %d not loaded yet: %s", self.model, version, exc)
            raise FailedPrecondition(f"model {self.model!r} version {version} not loaded: {exc}") from None
        except Exception as exc:
            reason = str(exc) or type(exc).__name__
            self.rejected[version] = reason
            still = "" if first else f"; still serving {self.current.label}"
            log.error("model %s version %d rejected: %s%s", self.model, version, reason, still)
            if self.on_reject is not None:
                self.on_reject(version, reason)
            raise FailedPrecondition(f"model {self.model!r} version {version} rejected: {reason}") from None
        return ServedModel(recommender, path, version, f"{self.model}/{version}:{recommender.model_version}")

    def _check_schema(self, recommender: Recommender) -> None:
        wanted = recommender.manifest.schema_hash
        try:
            served = self.features.schema_hash()
        except Unavailable:
            if wanted == self.current.recommender.manifest.schema_hash:
                return  # the health watch keeps asking; requests check every answer's hash too
            raise
        if served != wanted:
            raise FailedPrecondition(
                f"its feature schema {wanted} is not the one the feature service "
                f"at {self.features.target} serves ({served})"
            )


def _retire(recommender: Recommender, after_s: float) -> None:
    """Closes a swapped-out model's sessions once calls that read it have surely finished
    (a micro-batching session holds a thread, and with it the model, until closed)."""
    candidates = (recommender.session, getattr(getattr(recommender, "ann", None), "encoder", None))
    sessions = list({id(s): s for s in candidates if hasattr(s, "close")}.values())
    if sessions:
        timer = threading.Timer(after_s, lambda: [s.close() for s in sessions])
        timer.daemon = True
        timer.start()


def _check_outputs(recommender: Recommender, path: Path) -> None:
    """Scores on a small sample are finite and not all equal (see the module docstring)."""
    if recommender.inputs is None:
        users = [
            UserView(str(row.get("user_id", "")), True, tuple(row.get("item_ids", ())))
            for row in itertools.islice(read_jsonl(path / HISTORIES), SAMPLE_USERS)
        ]
        users = [u for u in users if len(recommender._seen(u))] or [
            UserView("", True, (recommender.index.item_ids[0],))
        ]
        ann = getattr(recommender, "ann", None)
        if ann is not None:  # the index answers Recommend: check what it gives
            scores = np.stack([ann.top_k(recommender._window(u), 10, None)[1] for u in users])
        else:
            scores = np.stack([recommender._next_item_scores(u) for u in users])
    else:
        n = min(recommender.manifest.num_items, 64)
        tokens = np.arange(FIRST_TOKEN, FIRST_TOKEN + n, dtype=np.int64)
        scores = recommender.session.run(recommender.inputs.feeds({}, np.zeros(0, dtype=np.int64), tokens))
        if scores.shape != (n,):
            raise FailedPrecondition(f"output shape {scores.shape} != ({n},) for {n} candidates")
    if not np.isfinite(scores).all():
        raise FailedPrecondition("the model gives non-finite scores (NaN or inf) on sample inputs")
    if scores.size > 1 and float(scores.max() - scores.min()) == 0.0:
        raise FailedPrecondition("the model gives every item the same score on sample inputs")
