import pytest


@pytest.fixture(autouse=True)
def kernel_cache(tmp_path_factory, monkeypatch):
    """Every test session builds into its own kernel cache (never the user's)."""
    root = tmp_path_factory.getbasetemp() / "kernel-cache"
    monkeypatch.setenv("EDGEGUARD_CACHE", str(root))
    return root
