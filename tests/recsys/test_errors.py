"""Every exception class of the four packages sits under `RecsysError` (recsys/errors.py draws
the tree), so the CLI and the servers catch one root and map it to a status code."""

from __future__ import annotations

import ast
import builtins
import importlib
from pathlib import Path

import pytest

from recsys.errors import RecsysError

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("recsys", "feature_service", "inference_server", "trainer")
BUILTIN_EXCEPTIONS = {
    name for name, value in vars(builtins).items() if isinstance(value, type) and issubclass(value, BaseException)
}

# Classes outside this test's owner's files that still derive from a builtin; remove an entry
# when its file is fixed (strict xfail: the test then fails until the entry goes).
PENDING: dict[str, str] = {}


def _base_name(node: ast.expr) -> str:
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")


def exception_classes() -> list[str]:
    """'path:Class' for each class whose bases lead, by name, to a builtin exception."""
    classes: dict[str, tuple[str, list[str]]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "v1" in path.relative_to(ROOT).parts:  # generated stubs
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef):
                    where = f"{path.relative_to(ROOT).as_posix()}:{node.name}"
                    classes[where] = (node.name, [_base_name(b) for b in node.bases])
    exceptions = set(BUILTIN_EXCEPTIONS)
    changed = True
    while changed:  # names defined in these packages that derive from an exception, to a fixpoint
        changed = False
        for name, bases in classes.values():
            if name not in exceptions and exceptions.intersection(bases):
                exceptions.add(name)
                changed = True
    return sorted(
        where for where, (name, bases) in classes.items() if exceptions.intersection(bases) and name != "RecsysError"
    )


def _case(where: str):
    if where in PENDING:
        return pytest.param(where, marks=pytest.mark.xfail(strict=True, reason=PENDING[where]))
    return where


def test_the_walk_finds_the_known_classes():
    found = exception_classes()
    assert {
        "recsys/errors.py:Unavailable",
        "recsys/client/_helpers.py:RecommendError",
        "recsys/artifact.py:ChecksumError",
        "trainer/export/onnx.py:ExportError",
    } <= set(found)


@pytest.mark.parametrize("where", [_case(w) for w in exception_classes()])
def test_every_exception_class_derives_from_recsys_error(where):
    path, name = where.split(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", ".").removesuffix(".__init__"))
    cls = getattr(module, name)
    assert issubclass(cls, RecsysError), f"{where} derives from {[b.__name__ for b in cls.__mro__[1:]]}"
