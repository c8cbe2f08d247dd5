"""Client device selection (the CUDA path is exercised on a GPU machine; here the choice itself is tested)."""

from __future__ import annotations

import pytest
import torch

from fedsim.devices import select_device
from fedsim.errors import FedsimError


def test_auto_uses_cuda_only_when_visible():
    assert select_device("auto", cuda_available=True) == torch.device("cuda")
    assert select_device("auto", cuda_available=False) == torch.device("cpu")
    assert select_device("cpu", cuda_available=True) == torch.device("cpu")
    assert select_device("cuda", cuda_available=True) == torch.device("cuda")


def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(FedsimError, match="client.device: 'cuda' but no GPU is visible"):
        select_device("cuda", cuda_available=False)
