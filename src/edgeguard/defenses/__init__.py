"""Defenses against adversarial examples."""

from .adversarial import AdversarialBatches, adversarial_training, robust_accuracy

__all__ = ["AdversarialBatches", "adversarial_training", "robust_accuracy"]
