import os

import pytest
import torch


def pytest_configure(config):
    # Under pytest-xdist each worker takes a core: one intra-op thread per worker (and per process a
    # test starts), so two workers on two cores do not oversubscribe them; most tests are bound by
    # Python (tracing, planning), not by kernels.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
