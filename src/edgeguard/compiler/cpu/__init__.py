"""CPU backend: C++ generated per layer and input size, compiled with the system compiler via ninja.

- :mod:`.target`: what to compile for (the host's compiler, flags, vector width; cross targets);
- :mod:`.tuning`: tile, slice, prefetch and chunking heuristics;
- :mod:`.codegen`: the layer header that ``kernels/conv.cpp`` includes;
- :mod:`.toolchain`: the private kernel cache and parallel builds;
- :mod:`.runtime`: loading a checked library and calling it.
"""

from .codegen import generate_source, is_temporal, last_tiles, render, tile_kind
from .runtime import CppKernel, check_private, load_library
from .target import CompilerUnavailable, Target, cross_target, host_target
from .toolchain import build_many, build_standalone, cache_dir, entry_dir
from .tuning import chunking, default_prefetch, default_slice_rows, pool_rows

__all__ = [
    "CompilerUnavailable",
    "CppKernel",
    "Target",
    "build_many",
    "build_standalone",
    "cache_dir",
    "check_private",
    "chunking",
    "cross_target",
    "default_prefetch",
    "default_slice_rows",
    "entry_dir",
    "generate_source",
    "host_target",
    "is_temporal",
    "last_tiles",
    "load_library",
    "pool_rows",
    "render",
    "tile_kind",
]
