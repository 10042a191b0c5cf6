"""Model registry: name -> (config class, module class, loss)."""

from trainer.models.sasrec import SASRec, SASRecConfig, sasrec_loss

MODELS = {
    "sasrec": (SASRecConfig, SASRec, sasrec_loss),
}

__all__ = ["MODELS", "SASRec", "SASRecConfig", "sasrec_loss"]
