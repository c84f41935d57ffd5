"""Which device a run trains on: ``device=auto|cpu|cuda|cuda:N``."""

import torch

from mmlexp.config import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA where available, else the CPU; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r}: CUDA is not available here; use device=auto or device=cpu")
    return device
