"""Run by test_train.py under torchrun: the unmodified `edgeguard train` entry point, then each rank
saves its own final weights so the test can compare them."""

import os
import sys

import torch

from edgeguard.engine import fit as _fit  # noqa: F401  (the entry point below calls it)

out = sys.argv[1]
captured = {}

import edgeguard.engine.train as train_module  # noqa: E402

original_fit = train_module.fit


def recording_fit(model, *args, **kwargs):
    history = original_fit(model, *args, **kwargs)
    captured["model"] = model
    return history


import edgeguard.cli  # noqa: E402
import edgeguard.engine  # noqa: E402

edgeguard.engine.fit = recording_fit
argv = ["-q", "train", "--model", "digits_cnn", "--dataset", "digits", "--epochs", "2"]
argv += ["--batch-size", "32", "--out", out, "--no-progress", "--device", "cpu"]
rc = edgeguard.cli.main(argv)
state = {k: v.detach().cpu() for k, v in captured["model"].state_dict().items()}
torch.save(state, os.path.join(out, f"rank{os.environ['RANK']}.pt"))
sys.exit(rc)
