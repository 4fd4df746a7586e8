"""One-shot magnitude pruning followed by masked fine-tuning: the baseline every other pruner is
compared with.  Units (per the scheme) with the smallest L2 norms are removed."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from ..engine import TrainConfig, evaluate, fit
from ..models.flops import FlopsReport, count_flops
from ..sparsity import SparsityScheme, get_scheme, load_pruned, prune_model, save_pruned

log = logging.getLogger("edgeguard")


@dataclass
class PruningOutcome:
    """Accuracies (in [0, 1]) before pruning, right after it and after fine-tuning, the FLOPs report
    of the pruned model and the fine-tuning history."""

    model: nn.Module
    scheme: SparsityScheme
    rates: dict[str, float]
    flops: FlopsReport
    accuracy_dense: float
    accuracy_pruned: float
    accuracy_finetuned: float
    history: list[dict[str, float]] = field(default_factory=list)


def magnitude_prune_and_finetune(
    model: nn.Module,
    scheme: str | SparsityScheme,
    train_set: Dataset,
    val_set: Dataset,
    input_shape: tuple[int, ...],
    rates: Any = None,
    flops_reduction: float | None = None,
    finetune: TrainConfig | None = None,
    workdir: str | Path | None = None,
    resume: bool = False,
    copy_model: bool = True,
    **scheme_options: Any,
) -> PruningOutcome:
    """Prune ``model`` one-shot to ``rates`` or ``flops_reduction`` with ``scheme``, then fine-tune it
    with the masks kept applied.

    With ``workdir`` every stage is saved (``pruned.safetensors`` right after pruning, fine-tuning
    checkpoints under ``finetune/``) and ``resume`` continues from the last finished stage.
    """
    scheme = get_scheme(scheme, **scheme_options)
    cfg = finetune or TrainConfig(epochs=2, lr=1e-4)
    dense_acc = evaluate(model, val_set, cfg.batch_size, cfg.device)["accuracy"]
    net = copy.deepcopy(model) if copy_model else model
    stage = Path(workdir) / "pruned.safetensors" if workdir is not None else None
    if resume and stage is not None and stage.is_file():
        net, _, spec = load_pruned(stage, model=net)
        rates_map = {k: v.get("rate", float("nan")) for k, v in spec["layers"].items()}
        log.info("resumed: pruned model loaded from %s", stage)
    else:
        result = prune_model(
            net, scheme, rates=rates, flops_reduction=flops_reduction, input_shape=input_shape
        )
        rates_map = result.rates
        if stage is not None:
            save_pruned(net, stage, scheme, rates_map, extra={"input_shape": list(input_shape)})
    pruned_acc = evaluate(net, val_set, cfg.batch_size, cfg.device)["accuracy"]
    log.info(
        "%s pruning: accuracy %.4f -> %.4f before fine-tuning", scheme.name, dense_acc, pruned_acc
    )
    ckpt = Path(workdir) / "finetune" if workdir is not None else None
    history = fit(net, train_set, val_set, cfg, checkpoint_dir=ckpt, resume=resume)
    final_acc = evaluate(net, val_set, cfg.batch_size, cfg.device)["accuracy"]
    return PruningOutcome(
        model=net,
        scheme=scheme,
        rates=rates_map,
        flops=count_flops(net, input_shape),
        accuracy_dense=dense_acc,
        accuracy_pruned=pruned_acc,
        accuracy_finetuned=final_acc,
        history=history.epochs,
    )
