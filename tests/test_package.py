"""The package's face: version, public names, typing marker, kernel templates as package data."""

from importlib import resources

import edgeguard


def test_version_and_public_names():
    assert edgeguard.__version__.count(".") >= 2
    names = dir(edgeguard)
    for capability in ("sparsity", "prune", "compile", "attacks", "explain", "masks"):
        assert capability in names
    assert callable(edgeguard.compile)


def test_typed_and_ships_the_kernel_templates():
    assert resources.files("edgeguard").joinpath("py.typed").is_file()
    kernels = resources.files("edgeguard.compiler.cpu").joinpath("kernels")
    assert {"conv.cpp", "pool.cpp", "harness.cpp"} <= {p.name for p in kernels.iterdir()}
