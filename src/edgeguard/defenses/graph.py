"""Min-max robust training of GNNs (Xu et al., IJCAI 2019; Xu et al., arXiv 2002.10947):

    min_theta  max_{flips within budget}  CE(model_theta(perturbed graph), labels of the training nodes)

Each epoch the inner maximisation (PGD, GTA or ZO-GTA, or any graph attack) perturbs the topology
against the current model, aimed at the training nodes, and the outer step trains on the perturbed
graph.  GTA needs a few gradient evaluations per epoch where PGD needs tens, and ZO-GTA needs only the
model's outputs.

With several attacks (say a topology and a feature attack, or CE and CW losses) the outer loss is
``sum_k w_k CE_k`` over the K perturbed graphs, with ``w`` in the simplex either uniform
(``"average"``) or moved by projected ascent toward the attacks the model is weakest against
(``"minmax"``, the min-max utility of :mod:`edgeguard.attacks.minmax`, Wang et al. 2021)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from ..attacks.graph import GraphAttack, GraphAttackError
from ..attacks.minmax import MinMaxWeights
from ..engine import TrainConfig
from ..engine.graph import fit_graph
from ..engine.train import History

log = logging.getLogger(__name__)


class InnerMax:
    """``perturb(model, data) -> data'`` (one attack) or ``[data'_1, ..., data'_K]`` (several): each
    attack run on ``data.train_mask`` against the current model; ``seconds`` and ``calls``
    accumulate their cost."""

    def __init__(self, attack: GraphAttack | Sequence[GraphAttack]) -> None:
        self.attacks = [attack] if isinstance(attack, GraphAttack) else list(attack)
        if not self.attacks or not all(isinstance(a, GraphAttack) for a in self.attacks):
            raise GraphAttackError(f"inner maximisation needs graph attacks, got {attack!r}")
        self.seconds, self.calls = 0.0, 0

    def __call__(self, model: nn.Module, data):
        out = []
        for attack in self.attacks:
            res = attack.run(model, data, nodes=data.train_mask)
            self.seconds += res.seconds
            out.append(res.data)
        self.calls += 1
        return out[0] if len(out) == 1 else out


def robust_train(
    model: nn.Module,
    data,
    attack: GraphAttack | Sequence[GraphAttack] | None,
    config: TrainConfig | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    log_every: int = 10,
    weighting: str = "minmax",
    select: str = "val",
    patience: int | None = None,
) -> History:
    """Train ``model`` on ``data`` with the inner maximisation ``attack`` each epoch (``None``:
    natural training; a list: several attacks combined by ``weighting``, ``"minmax"`` or
    ``"average"``).  History entries carry ``seconds`` and ``attack_seconds`` per epoch, and with
    several attacks their training losses and weights.  ``select`` / ``patience``: the model
    selection of :func:`~edgeguard.engine.graph.fit_graph` (``"attacked-val"``: validation
    accuracy on the epoch's perturbed graphs)."""
    perturb = InnerMax(attack) if attack is not None else None
    combine = None
    if perturb is not None and len(perturb.attacks) > 1:
        combine = MinMaxWeights(len(perturb.attacks), weighting)
    return fit_graph(
        model,
        data,
        config,
        perturb=perturb,
        combine=combine,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        log_every=log_every,
        select=select,
        patience=patience,
    )
