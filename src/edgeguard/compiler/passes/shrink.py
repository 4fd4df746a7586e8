"""Pass: physical shrinking of filter/channel pruning.

Shrinking removes a conv's dead filters (all weights zero) together with the matching input channels
of the next layer, the BatchNorm between them, and the matching inputs of a Linear layer after a
flatten.  It follows a producer only through a private chain of channel-wise operations (activations,
BatchNorm, max/adaptive pooling, dropout); a tensor that also feeds a residual add, a concatenation or
any other consumer is left whole, which is what keeps R(2+1)D and ResNet blocks correct.

A removed filter still outputs its bias ``b``; after the chain that is a constant ``v = chain(b)`` per
channel.  For exactness its contribution to the consumer is added back: folded into the bias of a
Linear consumer, and as a precomputed field (zero padding makes it position dependent) for a conv.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from ...models.surgery import slice_conv
from .graph import BATCHNORMS, CONVS, effective_weight, module_of, set_module, shared
from .hard_swish import hard_swish_scaled

ACTIVATIONS = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
)
# Pooling that maps a constant channel to the same constant (max pooling pads with -inf).
CONSTANT_POOLS = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
)
ACT_FUNCS = {
    torch.relu,
    F.relu,
    torch.sigmoid,
    torch.tanh,
    F.gelu,
    F.silu,
    F.relu6,
    F.hardswish,
    F.dropout,
    torch.nn.functional.leaky_relu,
    hard_swish_scaled,
}


class ConstantChannelField(nn.Module):
    """Adds back what removed constant input channels contributed to a conv: ``conv(v * ones)``
    with the consumer's own padding (zeros, ``"same"``, reflect, replicate, circular), computed
    once per input size (inference only)."""

    def __init__(self, weight: torch.Tensor, value: torch.Tensor, conv: nn.Module) -> None:
        super().__init__()
        self.register_buffer("weight", weight.contiguous())  # [M, R, *kernel]
        self.register_buffer("value", value.contiguous())  # [R]
        self.stride, self.dilation = conv.stride, conv.dilation
        self.mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
        # nn.ConvNd's own (left, right) pads per dim, last dim first, as F.pad takes them (this
        # also covers padding="same" where torch pads one side more)
        self.pads = tuple(conv._reversed_padding_repeated_twice)
        self._cache: dict[tuple, torch.Tensor] = {}

    def field(self, size: tuple[int, ...]) -> torch.Tensor:
        if size not in self._cache:
            ones = self.value.view(1, -1, *[1] * len(size)).expand(1, -1, *size)
            conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(size)]
            padded = F.pad(ones.contiguous(), self.pads, mode=self.mode)  # as nn.ConvNd pads
            self._cache[size] = conv(padded, self.weight, None, self.stride, 0, self.dilation)
        return self._cache[size]

    def forward(self, consumer_input: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return out + self.field(tuple(consumer_input.shape[2:])).to(out.dtype)


def _chain(gm: fx.GraphModule, node: fx.Node):
    """Follow ``node``'s single-user chain of channel-wise ops; returns (chain modules, consumer node,
    consumer kind) with kind ``"conv"`` or ``"linear"``, or None when it cannot be shrunk."""
    chain: list[nn.Module | object] = []
    cur = node
    while True:
        if len(cur.users) != 1:
            return None
        (nxt,) = cur.users
        m = module_of(gm, nxt)
        if isinstance(m, ConstantChannelField) and nxt.args[1:2] == (cur,):
            # The field added back for the producer's own removed inputs: zero on its dead filters
            # (all their weights are zero), so it passes constants through; sliced with them.
            chain.append(nxt)
            cur = nxt
            continue
        if nxt.args[:1] != (cur,):
            return None
        if isinstance(m, CONVS) and m.groups == 1:
            return chain, nxt, "conv"
        if isinstance(m, BATCHNORMS) and m.running_mean is None:
            return None  # normalises with the batch's statistics: not a fixed per-channel map
        if isinstance(m, ACTIVATIONS + CONSTANT_POOLS + BATCHNORMS) or (
            nxt.op == "call_function" and nxt.target in ACT_FUNCS
        ):
            chain.append(nxt)
        elif (nxt.op == "call_method" and nxt.target == "flatten") or (
            nxt.op == "call_function" and nxt.target is torch.flatten
        ):
            start = nxt.args[1] if len(nxt.args) > 1 else nxt.kwargs.get("start_dim", 0)
            if start != 1 or len(nxt.users) != 1:
                return None
            (lin,) = nxt.users
            if isinstance(module_of(gm, lin), nn.Linear) and lin.args[:1] == (nxt,):
                return chain, lin, "linear"
            return None
        else:
            return None
        cur = nxt


def _constant_through(gm: fx.GraphModule, chain: list[fx.Node], v: torch.Tensor) -> torch.Tensor:
    """Value of constant channels ``v [C]`` after the chain (pooling keeps constants)."""
    x = v.view(1, -1)
    for n in chain:
        m = module_of(gm, n)
        if isinstance(m, BATCHNORMS):
            x = F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)
        elif isinstance(m, (*CONSTANT_POOLS, ConstantChannelField)):
            continue
        elif m is not None:
            x = m(x.clone())
        else:
            x = n.target(x.clone(), *n.args[1:], **n.kwargs)
    return x.view(-1)


# Kept channel counts are rounded up to a multiple of this (when the layer had one): runtimes'
# blocked layouts (oneDNN, ONNX Runtime's NCHWc) fall back to slower paths on other counts
# (docs/compiler.md, design decisions).
CHANNEL_ALIGN = 8
# A conv is sliced only when this share of its filters goes: the sparse kernels skip dead filters
# anyway, and ONNX Runtime ran a VGG-16 with 2-3 % of its filters sliced off slower than unsliced.
MIN_SHRINK_SHARE = 1 / 8


def align_kept(remove: torch.Tensor, prefer: torch.Tensor) -> torch.Tensor:
    """``remove [C]`` with the fewest channels put back so that the kept count is a multiple of
    ``CHANNEL_ALIGN``; channels in ``prefer`` go back first.  Only for layers of at least four
    such multiples whose ``C`` is one, and never back to all ``C`` (small layers shrink as is)."""
    n = len(remove)
    kept = n - int(remove.sum())
    back = -kept % CHANNEL_ALIGN
    if n % CHANNEL_ALIGN or n < 4 * CHANNEL_ALIGN or back == 0 or kept in (0, n - back):
        return remove
    order = torch.nonzero(remove).flatten()
    order = order[torch.argsort((~prefer[order]).to(torch.int8), stable=True)]
    remove = remove.clone()
    remove[order[:back]] = False
    return remove


def shrink(gm: fx.GraphModule) -> dict[str, tuple[int, int]]:
    """Physically remove dead filters/channels; returns ``{conv: (filters before, after)}``."""
    changed: dict[str, tuple[int, int]] = {}
    for node in list(gm.graph.nodes):
        conv = module_of(gm, node)
        if not isinstance(conv, CONVS) or conv.groups != 1 or shared(gm, node):
            continue
        found = _chain(gm, node)
        if found is None:
            continue
        chain, consumer, kind = found
        if shared(gm, consumer) or any(shared(gm, n) for n in chain):
            continue  # slicing a module called elsewhere would change its other calls
        if any(len(getattr(module_of(gm, n), "_forward_hooks", {})) for n in chain):
            continue
        w = effective_weight(conv)
        nf = w.shape[0]
        dead = (w.reshape(nf, -1) == 0).all(1)
        for n in chain:
            # A filter with zero weights still varies over positions if a field of removed input
            # channels is added to it (padding makes the field position dependent).
            if isinstance(field := module_of(gm, n), ConstantChannelField):
                dead &= (field.weight.reshape(nf, -1) == 0).all(1)
        cm = module_of(gm, consumer)
        cw = effective_weight(cm)
        if kind == "conv":
            unused = (cw.transpose(0, 1).reshape(nf, -1) == 0).all(1)
            span = 1
        else:
            if cw.shape[1] % nf:
                continue
            span = cw.shape[1] // nf
            unused = (cw.view(cw.shape[0], nf, span) == 0).all(0).all(1)
        remove = align_kept(dead | unused, dead & ~unused)
        if int(remove.sum()) < MIN_SHRINK_SHARE * nf or remove.all():
            continue  # a few incidental dead filters: slicing saves little and costs runtimes more
        keep = torch.nonzero(~remove).flatten()
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros(nf)
        value = _constant_through(gm, chain, torch.where(dead, bias, torch.zeros_like(bias)))
        fix = remove & ~unused & (value != 0)  # removed channels the consumer still reads
        set_module(gm, node.target, slice_conv(conv, out_keep=keep))
        for n in chain:
            m = module_of(gm, n)
            if isinstance(m, ConstantChannelField):
                m.weight = m.weight[keep].contiguous()
                m._cache.clear()
            if isinstance(m, BATCHNORMS):
                for attr in ("weight", "bias"):
                    if getattr(m, attr) is not None:
                        getattr(m, attr).data = getattr(m, attr).data[keep]
                m.running_mean = m.running_mean[keep]
                m.running_var = m.running_var[keep]
                m.num_features = len(keep)
        if kind == "conv":
            set_module(gm, consumer.target, slice_conv(cm, in_keep=keep))
            if fix.any():
                field = ConstantChannelField(cw[:, fix], value[fix], cm)
                name = consumer.target.replace(".", "_") + "_removed_channels"
                gm.add_submodule(name, field)
                with gm.graph.inserting_after(consumer):
                    add = gm.graph.call_module(name, (consumer.args[0], consumer))
                consumer.replace_all_uses_with(add, delete_user_cb=lambda u, a=add: u is not a)
        else:
            cols = (keep.view(-1, 1) * span + torch.arange(span)).flatten()
            lin = nn.Linear(len(cols), cm.out_features, bias=True)
            lin.weight.data = cw[:, cols].contiguous()
            lb = cm.bias.detach().clone() if cm.bias is not None else torch.zeros(cm.out_features)
            if fix.any():
                wv = cw.view(cw.shape[0], nf, span)[:, fix].sum(2)  # [out, removed]
                lb = lb + wv @ value[fix]
            lin.bias.data = lb
            set_module(gm, consumer.target, lin.train(cm.training))
        changed[node.target] = (nf, len(keep))
    gm.graph.lint()
    gm.recompile()
    return changed
