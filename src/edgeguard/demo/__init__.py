"""The built-in demo: train a small C3D on synthetic moving-shape videos, prune it with KGS and with
filter pruning at the same FLOPs reduction, fine-tune both, compile both to sparse code and time
them, compare the pruning methods on the digits CNN, and write an HTML report with the per-layer
tables and plots, attack the digits CNN (white-box and black-box), and explain those attacks
(promotion/suppression, CAM, network dissection of a CNN trained on synthetic concept images), and
attack a GCN's topology before and after min-max robust training, and train an adversarial T-shirt
patch against the COCO-trained CenterNet on whole real photographs (when the shared persons photos
and the fetched detector weights are there; the HOG port on person crops without the weights).
Needs no other files.  One module per section (:data:`run.SECTIONS`); a new capability adds one."""

from .pruning import materialise
from .run import SECTIONS, run_demo
from .settings import QUICK, DemoContext, DemoSettings

__all__ = ["QUICK", "SECTIONS", "DemoContext", "DemoSettings", "materialise", "run_demo"]
