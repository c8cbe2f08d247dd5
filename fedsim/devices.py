"""Where clients train: the device a client process uses for `client.device`."""

from __future__ import annotations

import torch

from fedsim.errors import FedsimError


def select_device(preference: str, cuda_available: bool | None = None) -> torch.device:
    """'auto': CUDA when this process sees a GPU (a Ray actor given num_gpus > 0), else CPU."""
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if preference == "cuda" and not available:
        raise FedsimError("client.device", "'cuda' but no GPU is visible to this client",
                          "use device = 'auto', or give clients GPUs with run.resources.num_gpus")
    return torch.device("cuda" if preference != "cpu" and available else "cpu")
