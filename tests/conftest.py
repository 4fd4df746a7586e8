import pytest
import torch

from edgeguard.data import digits
from edgeguard.engine import TrainConfig, fit, seed_everything
from edgeguard.models import build


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
