"""The torch.distributed process group that joins the tensor-parallel ranks.

The group is built directly from a TCPStore (ProcessGroupGloo on CPU, ProcessGroupNCCL on CUDA)
instead of through `init_process_group`, so it is no global state of the user's process: an engine
owns its group, and several engines (or a closed and a new one) can live in one process. Rank 0 is
the engine's own process and hosts the store on a free port; the workers connect to it.

Every collective has a timeout, so a rank that stops answering fails the others instead of hanging
them forever; a rank that dies closes its connections, which fails them at once.
"""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist

HOST = "127.0.0.1"  # the ranks of one engine run on one machine
COLLECTIVE_TIMEOUT_S = 60.0  # longest a rank waits for the others in one collective (or to connect)


def new_store(size: int) -> dist.TCPStore:
    """The rendezvous store of rank 0, on a port the OS picks (`store.port`)."""
    timeout = timedelta(seconds=COLLECTIVE_TIMEOUT_S)
    return dist.TCPStore(HOST, 0, size, is_master=True, timeout=timeout, wait_for_workers=False)


def connect(store: dist.Store | None, rank: int, size: int, port: int, device: torch.device):
    """Joins rank to the group (blocks until every rank has joined); workers pass store=None."""
    timeout = timedelta(seconds=COLLECTIVE_TIMEOUT_S)
    if store is None:
        store = dist.TCPStore(HOST, port, size, is_master=False, timeout=timeout)
    if device.type == "cuda":
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, size, options)
    return dist.ProcessGroupGloo(store, rank, size, timeout)
