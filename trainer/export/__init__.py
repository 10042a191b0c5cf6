"""trainer.export."""
