"""Side information for the sequential backbones (SASRec, GRU4Rec, Caser): item features fused
into the item embeddings, and the user's own features added to the sequence representation.

    item(i)    = FusedItemEmbedding (trainer/models/content.py): id embedding + content(i)
    user(u)    = MLP([emb_1(cat_1) ; ... ; emb_C(cat_C) ; num])          (B, D)
    hidden     = backbone.encode(seq) + user(u)   at every position      (B, L, D)
    score(i)   = backbone.score(hidden)

- item features: the fused table takes the place of the backbone's item table wherever the
  backbone reads one (SASRec and GRU4Rec share one table for input and output; Caser has an
  input table and a separate output table, and both become fused tables over the same content).
- user features: `user_cat` (B, C) int64 tokens of the categorical user features (PAD = 0
  missing, OOV = 1 unseen) and `user_num` (B, F) float32 standardised numeric ones (0 = missing,
  the training mean), both as recsys.encoding.FeatureEncoder builds them. Adding the same vector
  at every position means every training position sees it, and so does the served last one;
  an empty history still gets the user's vector.

With both options off the wrapper is the backbone: same parameters, same scores.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch
from torch import nn

from trainer.models.content import ContentSASRecConfig, FusedItemEmbedding

__all__ = ["SideInfoConfig", "SideInfoModel", "UserFeatures", "WithUsers"]


@dataclass(frozen=True)
class SideInfoConfig:
    hidden: int  # the backbone's width D
    num_items: int  # real items (tables have num_items + FIRST_TOKEN rows)
    user_cat: tuple[int, ...] = ()  # vocabulary size (PAD and OOV included) per categorical user feature
    n_user_num: int = 0  # numeric user features
    user_field_dim: int = 16  # embedding width per categorical user feature
    items: ContentSASRecConfig | None = None  # item features on: sizes of the content tensors


class UserFeatures(nn.Module):
    """user_cat (B, C) int64, user_num (B, F) float32 -> (B, D)."""

    def __init__(self, cfg: SideInfoConfig):
        super().__init__()
        self.cat = nn.ModuleList(nn.Embedding(v, cfg.user_field_dim, padding_idx=0) for v in cfg.user_cat)
        width = len(cfg.user_cat) * cfg.user_field_dim + cfg.n_user_num
        self.mlp = nn.Sequential(nn.Linear(width, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, cfg.hidden))

    def forward(self, user_cat: torch.Tensor | None, user_num: torch.Tensor | None) -> torch.Tensor:
        parts = [emb(user_cat[:, j]) for j, emb in enumerate(self.cat)]  # each (B, E)
        if user_num is not None and user_num.shape[-1]:
            parts.append(user_num.float())  # (B, F)
        return self.mlp(torch.cat(parts, dim=-1))  # (B, D)


class SideInfoModel(nn.Module):
    """A sequential backbone with item and/or user side information (see module docstring).

    `backbone` has `item_emb` (and Caser `out_emb`), `encode(seq) -> (B, L, D)` and
    `score(hidden) -> (..., N)`. Content buffers are filled with `set_content`.
    """

    def __init__(self, backbone: nn.Module, cfg: SideInfoConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.fused: list[str] = []  # the backbone's tables replaced by fused ones
        if cfg.items is not None:
            items = replace(cfg.items, num_items=cfg.num_items, hidden=cfg.hidden, content_bias=False)
            for name in ("item_emb", "out_emb"):
                if isinstance(getattr(backbone, name, None), nn.Embedding):
                    setattr(backbone, name, FusedItemEmbedding(items))
                    self.fused.append(name)
        self.user = UserFeatures(cfg) if cfg.user_cat or cfg.n_user_num else None

    @property
    def reads_users(self) -> bool:
        return self.user is not None

    def set_content(self, attrs: torch.Tensor, words: torch.Tensor, vectors: torch.Tensor, known: torch.Tensor) -> None:
        """The item content tensors (trainer/families/content.py ItemContent) for every fused table."""
        if not self.fused:
            raise ValueError("this model was built without item features")
        for name in self.fused:
            getattr(self.backbone, name).set_content(attrs, words, vectors, known)

    def user_vector(self, user_cat: torch.Tensor | None, user_num: torch.Tensor | None) -> torch.Tensor | None:
        """(B, D), or None for a model without user features."""
        if self.user is None:
            return None
        if (self.cfg.user_cat and user_cat is None) or (self.cfg.n_user_num and user_num is None):
            raise ValueError("this model reads user features: pass user_cat and user_num")
        return self.user(user_cat, user_num)

    def encode(
        self, item_seq: torch.Tensor, user_cat: torch.Tensor | None = None, user_num: torch.Tensor | None = None
    ) -> torch.Tensor:
        """item_seq (B, L) left-padded tokens -> hidden (B, L, D), the user vector added everywhere."""
        hidden = self.backbone.encode(item_seq)  # (B, L, D)
        user = self.user_vector(user_cat, user_num)
        return hidden if user is None else hidden + user.unsqueeze(1)

    def score(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., D) -> (..., N)."""
        return self.backbone.score(hidden)

    def output_embeddings(self) -> torch.Tensor:
        return self.backbone.output_embeddings()

    def output_bias(self) -> torch.Tensor | None:
        return self.backbone.output_bias()

    def output_rows(self, cols: torch.Tensor) -> torch.Tensor:
        """cols (...) -> (..., D) rows of `output_embeddings` (dense through a fused table)."""
        if self.fused:
            return self.output_embeddings()[cols]
        return self.backbone.output_rows(cols)

    def __getattr__(self, name: str):
        # Caser's `output_bias_rows` (read by the sampled losses when present) passes through.
        if name == "output_bias_rows" and hasattr(self._modules["backbone"], name):
            return getattr(self._modules["backbone"], name)
        return super().__getattr__(name)

    def forward(
        self, item_seq: torch.Tensor, user_cat: torch.Tensor | None = None, user_num: torch.Tensor | None = None
    ) -> torch.Tensor:
        """item_seq (B, L) [, user_cat (B, C), user_num (B, F)] -> scores (B, N) of the next item."""
        return self.score(self.encode(item_seq, user_cat, user_num)[:, -1, :])

    def with_users(self, user_cat: torch.Tensor | None, user_num: torch.Tensor | None) -> WithUsers:
        """This model with a batch's user features bound, for losses that call `encode(seq)`."""
        return WithUsers(self, user_cat, user_num)

    def export_view(self) -> SideInfoModel:
        """An equivalent eval-mode copy whose fused item tables are constant tensors."""
        view = copy.deepcopy(self).eval()
        with torch.no_grad():
            for name in view.fused:
                table = getattr(view.backbone, name)
                table.frozen = table.weight.detach().clone()
        return view


class WithUsers:
    """`model` whose `encode(seq)` adds the bound users' vectors; everything else is the model's.
    Rows of user_cat / user_num match the rows of the sequences passed to `encode`."""

    def __init__(self, model: SideInfoModel, user_cat: torch.Tensor | None, user_num: torch.Tensor | None):
        self.model, self.user_cat, self.user_num = model, user_cat, user_num

    def encode(self, item_seq: torch.Tensor) -> torch.Tensor:
        return self.model.encode(item_seq, self.user_cat, self.user_num)

    def __call__(self, item_seq: torch.Tensor) -> torch.Tensor:
        return self.model(item_seq, self.user_cat, self.user_num)

    def __getattr__(self, name: str):
        return getattr(self.model, name)
