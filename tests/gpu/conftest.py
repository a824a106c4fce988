"""The device the GPU checks run on: CUDA (they skip, saying so, without it), or the one given by
``--check-device`` (``scripts/gpu_check.sh`` with ``CHECK_DEVICE=cpu`` runs them on CPU, which is how
the suite keeps them working on machines without a GPU: ``tests/test_gpu_wheelhouse.py``)."""

from __future__ import annotations

import pytest
import torch

from tests.serve.conftest import server_factory  # noqa: F401  (the services started as the README starts them)


@pytest.fixture(scope="session")
def check_device(request) -> str:
    device = request.config.getoption("--check-device", default="cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("no CUDA device (torch.cuda.is_available() is False)")
    return device
