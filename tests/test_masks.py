"""The mask contract: one buffer name, not torch.nn.utils.prune's, never in a state_dict."""

import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from edgeguard.masks import MASK, apply_masks, mask_of, masked_weight, masks_of, set_mask


def test_masks_are_non_persistent_bool_buffers_apart_from_torch_prune():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    keep = torch.tensor([[1, 0, 1, 0]] * 3, dtype=torch.float32)
    torch_prune.random_unstructured(net[2], "weight", amount=0.5)
    set_mask(net[0], keep)
    assert MASK != "weight_mask" and mask_of(net[0]).dtype == torch.bool
    assert mask_of(net[2]) is None  # torch's own prune buffer is not ours
    assert not any(k.endswith(MASK) for k in net.state_dict())
    apply_masks(net)
    assert bool((net[0].weight[keep == 0] == 0).all())
    assert torch.equal(masked_weight(net[0]), net[0].weight.detach() * keep)
    assert list(masks_of(net)) == ["0"]
