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


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on 127.0.0.1 behind a fault proxy (tests/s3_server.py), for one test module:
    stopped after it, so that it shares no CPU with the timing-sensitive tests that run later (the
    100k-row fetcher load test missed deadlines on a few retried rows while one stayed up).

    The AWS_* variables point every client at it from here on: this process, and the processes it
    starts later (subprocesses, Ray nodes started after this, and the processes executor's workers:
    a forkserver already running is stopped so that the next pool's workers see the variables).
    A Ray started before this fixture does not see them."""
    import multiprocessing.forkserver

    from s3_server import MotoServer

    store = MotoServer().start()
    saved = {name: os.environ.get(name) for name in store.env()}
    os.environ.update(store.env())
    multiprocessing.forkserver._forkserver._stop()  # restarted on first use, with this environment
    try:
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
    except ImportError:
        pass
    yield store
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    multiprocessing.forkserver._forkserver._stop()
    store.close()


@pytest.fixture
def s3_bucket(s3):
    """A fresh, empty bucket for one test, as ``s3://<bucket>``; the store is up and fault-free."""
    import uuid

    s3.proxy.reset()
    yield s3.make_bucket(f"test-{uuid.uuid4().hex[:16]}")
    s3.proxy.reset()  # a test that failed with the store stopped leaves it up for the next
