"""Your own PyTorch model as a family member: `path/to/file.py:ClassName` or `package.module:ClassName`.

A class says which task it serves with a class attribute `task` ("next_item", the default, or
"rank") and is built with keyword arguments only:

- next_item: `Class(num_items=N, max_len=L, **model_options)`, with
  `encode(item_seq (B, L) int64, left-padded) -> hidden (B, L, D)` (causal: position t reads
  items up to t), `score(hidden (..., D)) -> (..., N)` and `forward(item_seq) -> (B, N)`, the
  scores after the whole history. `output_embeddings() -> (N, D)` and `output_bias()` are
  optional; with them the sampled losses and ANN retrieval work too.
- rank: `Class(fields=FieldLayout, **model_options)` (trainer/models/fields.py), keeping it as
  `self.fields`, with `logits(**inputs) -> (B,)` and `forward(**inputs) -> (B,)` probabilities,
  inputs as trainer/models/fields.py lists them (absent ones come as None).

docs/your-own-model.md walks through one.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from pathlib import Path

__all__ = ["TASKS", "is_custom", "kind_of", "load_model_class"]

TASKS = ("next_item", "rank")
REQUIRED = {"next_item": ("encode", "score", "forward"), "rank": ("logits", "forward")}


def is_custom(name: str) -> bool:
    """Whether a model name refers to a user's class (`module:Class` or `file.py:Class`)."""
    return ":" in name


def load_model_class(ref: str) -> type:
    """The class `ref` names, checked against its task's contract; ValueError says what is wrong."""
    where, _, class_name = ref.rpartition(":")
    if not where or not class_name.isidentifier():
        raise ValueError(f"model {ref!r}: expected path/to/file.py:ClassName or package.module:ClassName")
    if where.endswith(".py"):
        path = Path(where).resolve()
        if not path.is_file():
            raise ValueError(f"model {ref!r}: no file {path}")
        # one module name per file, so two files with the same name do not collide
        module_name = f"recsys_user_model_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
        module = sys.modules.get(module_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            try:
                spec.loader.exec_module(module)
            except Exception:
                del sys.modules[module_name]
                raise
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise ValueError(f"model {ref!r}: cannot import {where}: {exc}") from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise ValueError(f"model {ref!r}: {where} has no class {class_name}")
    task = getattr(cls, "task", "next_item")
    if task not in TASKS:
        raise ValueError(f"model {ref!r}: task must be one of {', '.join(TASKS)}; got {task!r}")
    missing = [m for m in REQUIRED[task] if not callable(getattr(cls, m, None))]
    if missing:
        raise ValueError(
            f"model {ref!r}: a {task} model needs method(s) {', '.join(missing)} (see docs/your-own-model.md)"
        )
    return cls


def kind_of(name: str) -> str:
    """The artifact's model kind: a built-in name as it is, a user's class by its class name
    (lower case, safe as a model-repository directory name)."""
    if not is_custom(name):
        return name
    return re.sub(r"[^a-z0-9_]+", "_", name.rpartition(":")[2].lower()).strip("_") or "custom"
