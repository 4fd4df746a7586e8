"""Physical adversarial patches against person detectors (Adversarial T-shirt, Xu et al. 2019)."""
