import pytest


@pytest.fixture(autouse=True)
def kernel_cache(tmp_path_factory, worker_id, monkeypatch):
    """Every test run builds into its own kernel cache (never the user's), shared by the run's
    xdist workers: the cache is safe for concurrent builders, and a kernel built once serves all."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if worker_id != "master" else base) / "kernel-cache"
    monkeypatch.setenv("EDGEGUARD_CACHE", str(root))
    return root
