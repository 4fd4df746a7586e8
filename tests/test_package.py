"""The package's face: version, public names, typing marker, kernel templates as package data, and
the README's package map (every package in it, the layering rule kept)."""

import ast
import re
from importlib import resources
from pathlib import Path

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
    assert {"conv.cpp", "pool.cpp", "harness.cpp", "prelude.h"} <= {
        p.name for p in kernels.iterdir()
    }


SRC = Path(edgeguard.__file__).parent


def _layers() -> dict[str, int]:
    """Top-level package or module -> its layer's rank in the README's package map (0 lowest)."""
    readme = (SRC.parents[1] / "README.md").read_text()
    table = readme.split("## Package map", 1)[1].split("\n\n")[2]
    rows = [r for r in table.splitlines() if r.startswith("| ") and not r.startswith("| layer")]
    ranks = {}
    for rank, row in enumerate(rows):
        for name in re.findall(r"`(\w+)/?`", row.split("|")[2]):
            if (SRC / name).is_dir() or (SRC / f"{name}.py").is_file():
                ranks.setdefault(name, rank)
    return ranks


def test_the_readme_package_map_names_every_package_and_the_layering_holds():
    tops = {p.stem for p in SRC.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()}
    ranks = _layers()
    assert set(ranks) == tops - {"__init__"}
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts == ("__init__",):  # the package face re-exports every layer
            continue
        package = parts[:-1]  # what relative imports start from (a package's __init__ too)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[: len(package) - node.level + 1]
                target = (*base, *(node.module or "").split(".")) if node.module else base
                names = [target[0]] if target else [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("edgeguard."):
                names = [node.module.split(".")[1]]
            else:
                continue
            wrong += [
                f"{'/'.join(parts)} imports {name}"
                for name in names
                if name in ranks and ranks[name] > ranks[parts[0]]
            ]
    # the README's one exception: the person CNN is saved in the model-file format (see there)
    allowed = {"models/detectors/train imports modelfile"}
    wrong = sorted(set(wrong) - allowed)
    assert not wrong, "imports from a higher layer: " + "; ".join(wrong)
