"""Model registry: name -> (config class, module class). Every model here is sequential:
`forward(item_seq (B, L) int64, left-padded) -> scores (B, N)`, with `encode` and `score` for
training at every position. The classic baselines (pop, itemknn, ease) keep that `forward` but
are fitted in closed form, not trained (trainer/models/classic.py): they are CLASSIC_MODELS."""

from trainer.models.bpr_mf import BPRMF, BPRMFConfig
from trainer.models.caser import Caser, CaserConfig
from trainer.models.classic import CLASSIC_MODELS
from trainer.models.content import ContentSASRec, ContentSASRecConfig
from trainer.models.gru4rec import GRU4Rec, GRU4RecConfig
from trainer.models.sasrec import SASRec, SASRecConfig

MODELS = {
    "sasrec": (SASRecConfig, SASRec),
    "gru4rec": (GRU4RecConfig, GRU4Rec),
    "caser": (CaserConfig, Caser),
    "bpr_mf": (BPRMFConfig, BPRMF),
    # SASRec over fused id + content item vectors (cold start); built with its item tables by
    # trainer/families/content.py. Built from the registry alone it has no content (plain id vectors).
    "content_sasrec": (ContentSASRecConfig, ContentSASRec),
}
# Models whose item vectors come from the item table: the pipeline builds them with their content.
CONTENT_MODELS = ("content_sasrec",)

__all__ = [
    "BPRMF",
    "CLASSIC_MODELS",
    "CONTENT_MODELS",
    "BPRMFConfig",
    "MODELS",
    "Caser",
    "CaserConfig",
    "ContentSASRec",
    "ContentSASRecConfig",
    "GRU4Rec",
    "GRU4RecConfig",
    "SASRec",
    "SASRecConfig",
]
