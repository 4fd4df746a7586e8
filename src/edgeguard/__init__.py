"""edgeguard: make deep models fast on edge hardware and safe against adversaries.

``edgeguard.compile(model, backend="cpu" | "cuda" | "auto")`` compiles a pruned model (see
:mod:`edgeguard.compile`); the other capabilities live in their subpackages.
"""

import importlib


def __getattr__(name: str):
    if name == "compile":  # lazy: importing edgeguard does not load the compiler
        return importlib.import_module(".compile", __name__)
    raise AttributeError(f"module 'edgeguard' has no attribute {name!r}")
