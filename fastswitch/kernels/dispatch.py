"""Choosing between the Triton kernels and their torch twins, at call time.

"auto" picks Triton for CUDA tensors, and Triton's interpreter for CPU tensors when TRITON_INTERPRET=1
(how the tests exercise the real kernels without a GPU); otherwise the torch twin. Triton is imported
only when a Triton kernel is about to run, so the package imports on machines without it.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

BACKENDS = ("auto", "triton", "torch")


@functools.cache
def triton_installed() -> bool:
    # Cached: without the cache every kernel call on the torch path would search sys.path for triton.
    return importlib.util.find_spec("triton") is not None


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def resolve_backend(backend: str, device: torch.device) -> str:
    """Return "triton" or "torch" for tensors on `device`; ValueError when the request cannot be met."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {BACKENDS}")
    triton_can_run = device.type == "cuda" or (device.type == "cpu" and triton_interpreting())
    if backend == "auto":
        return "triton" if triton_can_run and triton_installed() else "torch"
    if backend == "triton":
        if not triton_installed():
            raise ValueError("backend='triton' but triton is not installed; use backend='torch'")
        if not triton_can_run:
            raise ValueError(
                f"backend='triton' cannot run on {device.type} tensors; "
                "use CUDA tensors or set TRITON_INTERPRET=1 before importing triton"
            )
    return backend
