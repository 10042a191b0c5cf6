"""trainer.families."""
