"""edgeguard: make deep models fast on edge hardware and safe against adversaries.

``edgeguard.compile(model, backend="cpu" | "cuda" | "auto")`` compiles a pruned model (see
:mod:`edgeguard.compiler`); the other capabilities live in their subpackages (``dir(edgeguard)``
lists them; the README's package map says what each holds).
"""

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edgeguard")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

# capabilities first, then the shared conventions and the app layer
__all__ = [
    "__version__",
    "attacks",
    "cli",
    "compile",
    "compiler",
    "data",
    "defenses",
    "demo",
    "engine",
    "errors",
    "explain",
    "masks",
    "models",
    "prune",
    "registry",
    "report",
    "settings",
    "sparsity",
    "validation",
]


def compile(model, backend: str = "auto", **kwargs):
    """Compile a pruned model for inference: :func:`edgeguard.compiler.compile_model` (same
    arguments); importing edgeguard does not load the compiler until this is called."""
    from .compiler import compile_model

    return compile_model(model, backend, **kwargs)


def __getattr__(name: str):
    if name in __all__ and name not in (
        "__version__",
        "compile",
    ):  # lazy: importing edgeguard loads nothing else
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'edgeguard' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
