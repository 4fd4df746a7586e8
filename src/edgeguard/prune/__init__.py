"""HOW models are pruned: the regularise -> prune -> fine-tune pipeline.  ``magnitude`` is the one-shot
baseline."""

from .magnitude import PruningOutcome, magnitude_prune_and_finetune

__all__ = ["PruningOutcome", "magnitude_prune_and_finetune"]
