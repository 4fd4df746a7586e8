import os

import pytest
import torch

from edgeguard.data import digits
from edgeguard.engine import TrainConfig, fit, seed_everything
from edgeguard.models import build


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):  # one worker per core: two threads each would thrash
        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits_model():
    """A digits CNN trained for a few epochs (about 95% held-out accuracy), eval mode."""
    seed_everything(0)
    model = build("digits_cnn")
    fit(model, digits(True), None, TrainConfig(epochs=6, lr=3e-3, progress=False))
    return model.eval()


@pytest.fixture(scope="session")
def digits_batch(digits_model):
    """200 held-out digits the model classifies correctly: (x [N, 1, 8, 8] in [0, 1], y [N])."""
    ds = digits(False)
    x, y = ds.tensors
    with torch.no_grad():
        ok = digits_model(x).argmax(1) == y
    return x[ok][:200].clone(), y[ok][:200].clone()


@pytest.fixture(scope="session")
def shared_data():
    """``shared_data(sub)``: the path of a folder of the shared real data (``EDGEGUARD_DATA``,
    default ../shared/data); the test is skipped, with the reason, when that folder is absent."""
    from edgeguard.settings import DATA_ENV, data_root

    def get(sub: str):
        path = data_root() / sub
        if not path.exists():
            pytest.skip(f"{path} is absent (set {DATA_ENV} to the shared data folder)")
        return path

    return get
