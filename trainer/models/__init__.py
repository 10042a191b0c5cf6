"""Model registry: name -> (config class, module class). Every model here is sequential:
`forward(item_seq (B, L) int64, left-padded) -> scores (B, N)`, with `encode` and `score` for
training at every position."""

from trainer.models.caser import Caser, CaserConfig
from trainer.models.gru4rec import GRU4Rec, GRU4RecConfig
from trainer.models.sasrec import SASRec, SASRecConfig

MODELS = {
    "sasrec": (SASRecConfig, SASRec),
    "gru4rec": (GRU4RecConfig, GRU4Rec),
    "caser": (CaserConfig, Caser),
}

__all__ = ["MODELS", "Caser", "CaserConfig", "GRU4Rec", "GRU4RecConfig", "SASRec", "SASRecConfig"]
