"""Min-max robust training of GNNs (Xu et al., IJCAI 2019; Xu et al., arXiv 2002.10947):

    min_theta  max_{flips within budget}  CE(model_theta(perturbed graph), labels of the training nodes)

Each epoch the inner maximisation (PGD, GTA or ZO-GTA, or any graph attack) perturbs the topology
against the current model, aimed at the training nodes, and the outer step trains on the perturbed
graph.  GTA needs a few gradient evaluations per epoch where PGD needs tens, and ZO-GTA needs only the
model's outputs."""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from ..attacks.graph import GraphAttack
from ..engine import TrainConfig
from ..engine.graph import fit_graph
from ..engine.train import History

log = logging.getLogger(__name__)


class InnerMax:
    """``perturb(model, data) -> data'``: the attack run on ``data.train_mask`` against the current
    model; ``seconds`` and ``calls`` accumulate its cost."""

    def __init__(self, attack: GraphAttack) -> None:
        self.attack, self.seconds, self.calls = attack, 0.0, 0

    def __call__(self, model: nn.Module, data):
        res = self.attack.run(model, data, nodes=data.train_mask)
        self.seconds += res.seconds
        self.calls += 1
        return res.data


def robust_train(
    model: nn.Module,
    data,
    attack: GraphAttack | None,
    config: TrainConfig | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    log_every: int = 10,
) -> History:
    """Train ``model`` on ``data`` with the inner maximisation ``attack`` each epoch (``None``:
    natural training).  History entries carry ``seconds`` and ``attack_seconds`` per epoch."""
    perturb = InnerMax(attack) if attack is not None else None
    return fit_graph(model, data, config, perturb=perturb, checkpoint_dir=checkpoint_dir,
                     resume=resume, log_every=log_every)  # fmt: skip
