"""Model families by name: what `recsys train --model NAME` trains, with which config, and what
each family can do. A user's own model (`file.py:Class`, trainer/models/custom.py) joins the
family of its `task`.

    FamilySpec(name, task, config_cls, env_prefix, supports, train_and_export)

`supports` lists capabilities a family has; the CLI refuses the others with `why_not`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trainer.families.next_item import TrainConfig
from trainer.families.ranker import RANKERS, RankConfig
from trainer.families.two_tower import RetrievalConfig
from trainer.models import CLASSIC_MODELS, MODELS
from trainer.models.custom import is_custom, load_model_class

__all__ = ["BUILTIN_NAMES", "CAPABILITIES", "FamilySpec", "resolve"]

CAPABILITIES = ("resume", "nproc", "forget_users", "pseudonymise", "popularity_debias", "private", "item_vectors")

# Why a capability is missing where it is, said once for the CLI's errors.
WHY_NOT = {
    "popularity_debias": "it adjusts the next-item softmax's logits",
    "pseudonymise": "the pseudonymised ids are recorded in next-item artifacts only so far",
    "private": "DP-SGD (Opacus) supports sasrec only: the other models' layers have no per-user gradients there",
    "item_vectors": "item vectors feed the content model, content_sasrec",
    "nproc": "DP-SGD's accountant assumes one sampler: private runs use one process",
    "resume": "a DP-SGD run cannot resume: its privacy accounting covers one uninterrupted run",
}


@dataclass(frozen=True)
class FamilySpec:
    name: str  # the --model value
    task: str  # next_item | rank | two_tower
    config_cls: type  # TrainConfig | RankConfig | RetrievalConfig
    env_prefix: str  # environment variables that set config fields, e.g. RECSYS_TRAIN_EPOCHS
    supports: frozenset[str]
    train_and_export: Callable[..., Any]  # (cfg, interactions, out, **options) -> Manifest | None
    reasons: tuple[tuple[str, str], ...] = ()  # (capability, why this family lacks it) before WHY_NOT

    def why_not(self, capability: str) -> str:
        """One sentence for an error: the capability is not there for this model, and why."""
        reason = dict(self.reasons).get(capability) or WHY_NOT.get(capability, f"{self.task} models do not use it")
        return f"{capability.replace('_', '-')} is not supported by model {self.name!r}: {reason}"


def _next_item(cfg: TrainConfig, interactions, out, **options):
    from trainer.pipeline import train_and_export

    return train_and_export(interactions, out, cfg, **options)


def _with_features(
    cfg,
    interactions,
    out,
    *,
    users=None,
    items=None,
    progress=True,
    resume=False,
    forget_users=None,
    columns=None,
    **unsupported,
):
    """Rankers and two-tower: the same cleaned tables as next-item training, then their own run."""
    from trainer.export.ranker import train_and_export_ranker
    from trainer.export.two_tower import train_and_export_two_tower
    from trainer.pipeline import prepare_tables

    given = sorted(k for k, v in unsupported.items() if v)
    if given:
        raise ValueError(f"{', '.join(given)} not supported by model {cfg.model!r}")
    run = train_and_export_two_tower if isinstance(cfg, RetrievalConfig) else train_and_export_ranker
    tables, _ = prepare_tables(interactions, users, items, forget_users=forget_users, columns=columns)
    return run(cfg, interactions, out, progress=progress, resume=resume, tables=tables)


_SEQUENTIAL = frozenset({"resume", "nproc", "forget_users", "pseudonymise", "popularity_debias"})
_FEATURES = frozenset({"resume", "nproc", "forget_users"})


def _spec(name: str, task: str, supports: frozenset[str]) -> FamilySpec:
    config_cls, prefix, run = {
        "next_item": (TrainConfig, "RECSYS_TRAIN_", _next_item),
        "rank": (RankConfig, "RECSYS_RANK_", _with_features),
        "two_tower": (RetrievalConfig, "RECSYS_RETRIEVAL_", _with_features),
    }[task]
    return FamilySpec(name, task, config_cls, prefix, supports, run)


_BUILTIN: dict[str, FamilySpec] = {
    **{name: _spec(name, "next_item", _SEQUENTIAL) for name in MODELS if name != "content_sasrec"},
    "content_sasrec": _spec("content_sasrec", "next_item", _SEQUENTIAL | {"item_vectors"}),
    "ensemble": _spec("ensemble", "next_item", _SEQUENTIAL),
    **{name: _spec(name, "rank", _FEATURES) for name in RANKERS},
    "two_tower": _spec("two_tower", "two_tower", _FEATURES),
}
_BUILTIN["sasrec"] = _spec("sasrec", "next_item", _SEQUENTIAL | {"private"})
_CLOSED_FORM = "it is fitted in closed form in one pass: there are no epochs to resume or batches to share"
for _name in CLASSIC_MODELS:
    _BUILTIN[_name] = FamilySpec(
        _name,
        "next_item",
        TrainConfig,
        "RECSYS_TRAIN_",
        frozenset({"forget_users", "pseudonymise"}),
        _next_item,
        (("resume", _CLOSED_FORM), ("nproc", _CLOSED_FORM), ("popularity_debias", "it has no softmax to adjust")),
    )
BUILTIN_NAMES: tuple[str, ...] = tuple(_BUILTIN)


def resolve(name: str) -> FamilySpec:
    """The family of a built-in model name or of a user's `file.py:Class` / `module:Class`."""
    if name in _BUILTIN:
        return _BUILTIN[name]
    if is_custom(name):
        task = getattr(load_model_class(name), "task", "next_item")
        return _spec(name, task, _SEQUENTIAL if task == "next_item" else _FEATURES)
    raise ValueError(
        f"unknown model {name!r}; built-in: {', '.join(BUILTIN_NAMES)}; "
        f"or your own as path/to/file.py:ClassName (docs/your-own-model.md)"
    )
