"""One rule for ``--device`` / ``device=`` everywhere: a clear error instead of a torch traceback."""
from __future__ import annotations

import os
from typing import Union

import torch

__all__ = ["resolve_device", "available_memory_bytes"]


def resolve_device(device: Union[str, torch.device, None] = "cpu") -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"`` (CUDA when available) or a ``torch.device``.

    Raises ``ValueError`` naming the device when it is not a device torch knows, or when CUDA is
    requested on a machine without it (or with fewer GPUs than the index asks for).
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device {device!r} is not a device; use 'cpu', 'cuda', 'cuda:N' or 'auto'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: CUDA requested but not available on this machine; use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type not in ("cpu", "mps", "xpu"):
        raise ValueError(f"device {device!r} is not supported here; use 'cpu', 'cuda', 'cuda:N' or 'auto'")
    return dev


def available_memory_bytes(device: Union[str, torch.device, None] = None) -> int:
    """Memory available for new allocations on ``device`` (bytes).

    CUDA: free memory from ``torch.cuda.mem_get_info``; CPU: ``MemAvailable`` of /proc/meminfo,
    else ``os.sysconf`` available pages.
    """
    dev = resolve_device(device if device is not None else "cpu")
    if dev.type == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 1 << 62      # unknown: do not block
