"""Settings for the whole suite."""

import os


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # One torch thread per xdist worker: `make test` starts one worker per core, so the workers already use them.
        import torch

        torch.set_num_threads(1)
