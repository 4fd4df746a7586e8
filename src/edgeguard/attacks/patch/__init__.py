"""Physical adversarial patches against person detectors (Adversarial T-shirt, Xu et al. 2019).

- :mod:`.tshirt`: the white-box trainer (TPS + EOT, printability, min-max over detectors);
- :mod:`.zo`: the zeroth-order trainer (a black box's scores only);
- :mod:`.loss`: person scores of a detector on the wearers' boxes;
- :mod:`.metrics`: attack success with bootstrap intervals, pooled over folds;
- :mod:`.placement`, :mod:`.scenes`: the patch on person crops or on every wearer in whole photos;
- :mod:`.tps`, :mod:`.transforms`, :mod:`.printability`: cloth warps, EOT, printable colours;
- :mod:`.workflow`: :class:`TShirtStudy`, the workflow the CLI, the demo and the benchmarks run;
- :mod:`.study`: its building blocks (splits, detector checks, evaluation, figures).
"""

from .loss import detected, person_scores
from .metrics import ASR, attack_success, found_without_patch, person_counts
from .tshirt import AdversarialTShirt, TShirtConfig, TShirtResult
from .workflow import TShirtStudy
from .zo import ZOConfig, ZOTShirt

__all__ = [
    "ASR",
    "AdversarialTShirt",
    "TShirtConfig",
    "TShirtResult",
    "TShirtStudy",
    "ZOConfig",
    "ZOTShirt",
    "attack_success",
    "detected",
    "found_without_patch",
    "person_counts",
    "person_scores",
]
