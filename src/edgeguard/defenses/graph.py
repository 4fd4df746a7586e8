"""Min-max robust training of GNNs (Xu et al., IJCAI 2019; Xu et al., arXiv 2002.10947):

    min_theta  max_{flips within budget}  CE(model_theta(perturbed graph), labels of the training nodes)

Each epoch the inner maximisation (PGD, GTA or ZO-GTA, or any graph attack) perturbs the topology
against the current model and the outer step trains on the perturbed graph.  GTA needs a few gradient
evaluations per epoch where PGD needs tens, and ZO-GTA needs only the model's outputs.

Which nodes the game covers decides whether it helps (``cover``).  The attacker of the evaluation aims
at the test nodes, which in the transductive setting sit in the training graph unlabelled.  Attacking
and training on the labelled training nodes alone leaves them unprotected: the robust model ends no
more robust than the natural one, sometimes less.  As Xu et al.'s own code does, ``cover="all"``
(the default) first trains the model naturally, labels every unlabelled node with its prediction
(self-training; the training nodes keep their labels, validation labels are never used), and then
runs the min-max game on all nodes: the inner attack maximises the loss over every node, the outer
step minimises it over every node.

With several attacks (say a topology and a feature attack, or CE and CW losses) the outer loss is
``sum_k w_k CE_k`` over the K perturbed graphs, with ``w`` in the simplex either uniform
(``"average"``) or moved by projected ascent toward the attacks the model is weakest against
(``"minmax"``, the min-max utility of :mod:`edgeguard.attacks.minmax`, Wang et al. 2021)."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..attacks.graph import GraphAttack, GraphAttackError
from ..attacks.minmax import MinMaxWeights
from ..engine import TrainConfig
from ..engine.graph import eval_logits, fit_graph
from ..engine.train import History

log = logging.getLogger(__name__)


COVERS = ("all", "train")


class InnerMax:
    """``perturb(model, data) -> data'`` (one attack) or ``[data'_1, ..., data'_K]`` (several): each
    attack run against the current model on ``nodes`` (bool ``[N]``, default ``data.train_mask``)
    with targets ``labels`` (``[N]``, default ``data.y``); the perturbed graphs keep ``data.y``.
    ``seconds`` and ``calls`` accumulate their cost."""

    def __init__(
        self,
        attack: GraphAttack | Sequence[GraphAttack],
        labels: torch.Tensor | None = None,
        nodes: torch.Tensor | None = None,
    ) -> None:
        self.attacks = [attack] if isinstance(attack, GraphAttack) else list(attack)
        if not self.attacks or not all(isinstance(a, GraphAttack) for a in self.attacks):
            raise GraphAttackError(f"inner maximisation needs graph attacks, got {attack!r}")
        self.labels, self.nodes = labels, nodes
        self.seconds, self.calls = 0.0, 0

    def __call__(self, model: nn.Module, data):
        target = data
        if self.labels is not None:
            target = copy.copy(data)  # shallow: only y differs, the attack copies what it changes
            target.y = self.labels
        nodes = data.train_mask if self.nodes is None else self.nodes
        out = []
        for attack in self.attacks:
            res = attack.run(model, target, nodes=nodes)
            self.seconds += res.seconds
            res.data.y = data.y
            out.append(res.data)
        self.calls += 1
        return out[0] if len(out) == 1 else out


def pseudo_labels(model: nn.Module, data) -> torch.Tensor:
    """``[N]`` int64: ``data.y`` on the training nodes, the model's prediction on every other node."""
    labels = eval_logits(model, data).argmax(1)
    labels[data.train_mask] = data.y[data.train_mask]
    return labels


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
    cover: str = "all",
) -> History:
    """Train ``model`` on ``data`` with the inner maximisation ``attack`` each epoch (``None``:
    natural training; a list: several attacks combined by ``weighting``, ``"minmax"`` or
    ``"average"``).

    ``cover``: ``"all"`` (default) the natural training of ``config`` first (its checkpoints under
    ``checkpoint_dir/natural``), then the min-max game over every node with the natural model's
    pseudo-labels (module docstring), warm-started from it; ``"train"`` the game on the labelled
    training nodes only, from the given weights.  ``select`` / ``patience``: the model selection
    of :func:`~edgeguard.engine.graph.fit_graph`; ``"attacked-val"``: validation accuracy after
    the same attack(s) aimed at the validation nodes with their labels, after each step (it
    doubles the attack cost of an epoch; not counted in ``attack_seconds``).  Returns the robust
    phase's history: ``seconds`` and ``attack_seconds`` per epoch, with several attacks their
    training losses and weights."""
    if cover not in COVERS:
        raise GraphAttackError(f"cover must be one of {', '.join(COVERS)}, got {cover!r}")
    settings = {"resume": resume, "log_every": log_every, "select": select, "patience": patience}
    if attack is None:  # natural training: nothing attacks the validation nodes
        settings["select"] = "val" if select == "attacked-val" else select
        return fit_graph(model, data, config, checkpoint_dir=checkpoint_dir, **settings)
    labels = nodes = None
    if cover == "all":
        log.info("robust training: natural phase (pseudo-labels for the unlabelled nodes)")
        natural_dir = None if checkpoint_dir is None else Path(checkpoint_dir) / "natural"
        fit_graph(model, data, config, checkpoint_dir=natural_dir, **{**settings, "select": "val"})
        labels = pseudo_labels(model, data)
        nodes = torch.ones_like(data.train_mask)
        log.info("robust training: min-max phase over all %d nodes", data.num_nodes)
    perturb = InnerMax(attack, labels, nodes)
    judge = None
    val = getattr(data, "val_mask", None)
    if select == "attacked-val" and val is not None and bool(val.any()):
        judge = InnerMax(attack, nodes=val)
    combine = None
    if len(perturb.attacks) > 1:
        combine = MinMaxWeights(len(perturb.attacks), weighting)
    return fit_graph(
        model,
        data,
        config,
        perturb=perturb,
        combine=combine,
        checkpoint_dir=checkpoint_dir,
        labels=labels,
        train_nodes=nodes,
        val_perturb=judge,
        **settings,
    )
