"""Graph passes of the compiler, in the order :func:`edgeguard.compiler.compile_model` runs them:
identities out, even constant pads folded into the conv or max pool after them, hard-swish chains
fused, BatchNorm folded, channels shrunk, layers lowered to kernels (ReLU fused), sums and
products computed into kernel outputs, max pools fused into the CPU convs before them (once the
input size is known)."""

from .bn_fold import fold_batchnorm
from .graph import BATCHNORMS, CONVS, effective_weight, materialise_mask, module_of, set_module
from .hard_swish import fuse_hard_swish
from .identities import remove_identities
from .relu_fusion import fuse_relu
from .shrink import shrink

__all__ = [
    "BATCHNORMS",
    "CONVS",
    "effective_weight",
    "fold_batchnorm",
    "fuse_hard_swish",
    "fuse_relu",
    "materialise_mask",
    "module_of",
    "remove_identities",
    "set_module",
    "shrink",
]
