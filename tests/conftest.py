import os

# Any hub look-up would otherwise retry for ~47 s before failing; tests never reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

import pytest


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole test session (2 CPUs, no dashboard)."""
    import ray

    # address="local": a fresh Ray even when someone left a `ray start` cluster running on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def old_webdataset_path():
    """A folder holding webdataset 0.2.86, to put first on PYTHONPATH for open_clip_train
    (which fails with KeyError 'fname' on webdataset 1.x)."""
    import subprocess
    import sys
    from pathlib import Path

    target = Path(__file__).resolve().parent.parent / ".cache" / "webdataset-0.2.86"
    if not (target / "webdataset").is_dir():
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), "webdataset==0.2.86"],
            check=True,
        )
    return target
