"""WorkerGroup: rank 0's side of tensor parallelism -- it starts the workers, talks to them, and
notices when one dies.

The engine's own process is rank 0: it runs the scheduler once, samples once, and holds shard 0 of
the model and of the KV cache. `WorkerGroup.start` spawns ranks 1 .. N-1 (torch.multiprocessing,
spawn; one device per rank: cuda:r on a GPU machine, the CPU otherwise) and joins them in one
process group. Each engine step then costs one message per worker (`messages.Step`), sent just
before rank 0's own forward; the all-reduces inside the forward keep the ranks in step.

A worker that dies is found before each step (its process has exited, or it sent `Failed`) and, if
it dies during one, through the collective that fails (at once for a closed connection, after
`COLLECTIVE_TIMEOUT_S` at worst). Either way the engine gets a `WorkerFailure` naming the rank, its
exit code and its traceback, and the group is closed: later calls fail with the same error. Workers
are daemon processes, are stopped by `close()` (and by garbage collection), and exit by themselves
when the engine's process goes away.

As with any spawn-based library, a script that builds a tensor-parallel LLM must guard its entry
point with `if __name__ == "__main__":` (the workers import the main module).
"""

from __future__ import annotations

import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.multiprocessing as mp
from transformers import AutoConfig, PreTrainedModel

from fastswitch.cache.copy_engine import CopyJob, TorchCopyEngine
from fastswitch.models.gguf_cache import converted_gguf_folder
from fastswitch.models.llama import check_supported_config, num_kv_heads_of
from fastswitch.parallel.copy_engine import TensorParallelCopyEngine
from fastswitch.parallel.executor import TensorParallelExecutor
from fastswitch.parallel.group import COLLECTIVE_TIMEOUT_S, connect, new_store
from fastswitch.parallel.messages import Build, Failed, Ready, StatsRequest, Step, StepChunk, Stop
from fastswitch.parallel.partition import Partition, check_tensor_parallel_size
from fastswitch.parallel.worker import WorkerSettings, worker_main

if TYPE_CHECKING:
    from fastswitch.executor import ModelExecutor

START_TIMEOUT_S = 600.0  # loading a large checkpoint shard can take minutes
POLL_S = 0.05
STOP_TIMEOUT_S = 10.0


class WorkerFailure(RuntimeError):
    """A tensor-parallel worker died or raised; the engine cannot continue."""


def _source_config(source):
    if isinstance(source, PreTrainedModel):
        return source.config
    return AutoConfig.from_pretrained(source)


def _kill(processes: list) -> None:
    for process in processes:
        if process.is_alive():
            process.kill()
        process.join(STOP_TIMEOUT_S)


class WorkerGroup:
    def __init__(self, processes: list, conns: list, partition: Partition) -> None:
        self.processes = processes  # rank r is processes[r - 1]
        self.conns = conns
        self.partition = partition  # rank 0's
        self.failure: WorkerFailure | None = None
        self._next_job_id = 0
        self._queued: list[tuple[int, CopyJob]] = []
        self._block_copies: list[tuple[list[int], list[int]]] = []
        self._completed: list[int] = []
        self._finalizer = weakref.finalize(self, _kill, list(processes))

    @property
    def size(self) -> int:
        return self.partition.size

    @classmethod
    def start(cls, source, size: int, dtype, device: torch.device) -> WorkerGroup | None:
        """Spawn ranks 1..size-1 and join them with this process as rank 0 (None for size 1: no workers).
        ValueError before any spawn for a model that cannot be split over size ranks or a machine
        with too few GPUs."""
        if isinstance(source, (str, Path)) and Path(source).suffix == ".gguf":  # converted once, not per rank
            source = converted_gguf_folder(Path(source).expanduser())
        config = _source_config(source)
        check_supported_config(config)
        check_tensor_parallel_size(size, config.num_attention_heads, num_kv_heads_of(config), config.intermediate_size)
        if size == 1:
            return None
        if device.type == "cuda":
            if torch.cuda.device_count() < size or device.index not in (None, 0):
                raise ValueError(
                    f"tensor_parallel_size={size} on {device} needs devices cuda:0..cuda:{size - 1}; "
                    f"{torch.cuda.device_count()} are visible"
                )
            device = torch.device("cuda", 0)
        elif device.type != "cpu":
            raise ValueError(f"tensor parallelism runs on 'cpu' or 'cuda' devices, not {device}")
        settings = WorkerSettings(source, dtype, device.type, torch.get_num_threads())
        store = new_store(size)
        context = mp.get_context("spawn")
        processes, conns = [], []
        for rank in range(1, size):
            ours, theirs = context.Pipe()
            process = context.Process(
                target=worker_main, args=(rank, size, store.port, settings, theirs),
                name=f"fastswitch-tp-rank{rank}", daemon=True,
            )  # fmt: skip
            process.start()
            theirs.close()
            processes.append(process)
            conns.append(ours)
        try:
            group = cls._connect_rank0(store, size, device, processes, conns)
        except BaseException:
            _kill(processes)
            raise
        return cls(processes, conns, Partition(0, size, group))

    @staticmethod
    def _connect_rank0(store, size: int, device: torch.device, processes: list, conns: list):
        # Joining blocks until every worker has joined: do it aside and watch the workers meanwhile,
        # so one that dies while starting fails the start at once instead of after the timeout.
        result: dict = {}

        def join() -> None:
            try:
                result["group"] = connect(store, 0, size, store.port, device)
            except BaseException as error:
                result["error"] = error

        thread = threading.Thread(target=join, name="fastswitch-tp-connect", daemon=True)
        thread.start()
        deadline = time.monotonic() + COLLECTIVE_TIMEOUT_S
        while thread.is_alive():
            WorkerGroup._raise_if_dead(processes, conns)
            if time.monotonic() > deadline:
                raise WorkerFailure(f"tensor-parallel workers did not join within {COLLECTIVE_TIMEOUT_S:.0f} s")
            thread.join(POLL_S)
        if "error" in result:
            raise WorkerFailure(f"joining the tensor-parallel group failed: {result['error']}") from result["error"]
        return result["group"]

    # ---- set-up -----------------------------------------------------------------------------------

    def build(self, num_gpu_blocks: int, num_cpu_blocks: int, block_size: int, async_swap: bool, backend: str) -> None:
        """Waits for every worker's shard, then has each allocate its caches like rank 0's."""
        self._expect_ready(START_TIMEOUT_S)
        self._send(Build(num_gpu_blocks, num_cpu_blocks, block_size, async_swap, backend))
        self._expect_ready(START_TIMEOUT_S)

    def executor(self, rank0: ModelExecutor) -> TensorParallelExecutor:
        return TensorParallelExecutor(rank0, self)

    def copy_engine(self, local: TorchCopyEngine) -> TensorParallelCopyEngine:
        return TensorParallelCopyEngine(local, self)

    # ---- each step ---------------------------------------------------------------------------------

    def new_job(self, job: CopyJob) -> int:
        """Queues a copy for every worker (sent with the next step); returns its id."""
        job_id = self._next_job_id
        self._next_job_id += 1
        self._queued.append((job_id, job))
        return job_id

    def copy_blocks(self, src_blocks: list[int], dst_blocks: list[int]) -> None:
        """Queues a device block copy src -> dst (a forked sample's prompt KV) for every worker."""
        self._block_copies.append((list(src_blocks), list(dst_blocks)))

    def completed(self, job_id: int) -> None:
        """Rank 0 has seen the job done: the workers wait for theirs before their next forward."""
        self._completed.append(job_id)

    def send_step(self, chunks: list[StepChunk]) -> None:
        message = Step(self._queued, self._completed, chunks, self._block_copies)
        self._queued, self._completed, self._block_copies = [], [], []
        self._send(message)

    def collective_failed(self, error: BaseException) -> WorkerFailure:
        """The error to raise when rank 0's forward failed: names the worker that died, if one did."""
        deadline = time.monotonic() + 5.0  # a killed worker's exit can trail its closed socket a little
        while time.monotonic() < deadline:
            try:
                self._raise_if_dead(self.processes, self.conns)
            except WorkerFailure as failure:
                return self._fail(failure)
            time.sleep(POLL_S)
        return self._fail(WorkerFailure(f"tensor-parallel step failed on rank 0: {error}"))

    # ---- inspection and shutdown --------------------------------------------------------------------

    def worker_stats(self) -> list[dict]:
        """Each worker's counters (steps, copy_jobs, copy_calls, copy_blocks, forked_blocks), ranks 1..N-1."""
        self._send(StatsRequest())
        return [self._receive(conn, STOP_TIMEOUT_S) for conn in self.conns]

    def close(self) -> None:
        """Stops the workers after their copies in flight; kills any that do not stop in time."""
        if self._finalizer.alive and self.failure is None:
            try:
                if self._queued or self._completed:
                    self.send_step([])
                self._send(Stop())
            except WorkerFailure:
                pass
            for process in self.processes:
                process.join(STOP_TIMEOUT_S)
        self._finalizer()  # kills whatever still runs, once
        for conn in self.conns:
            conn.close()

    # ---- helpers -----------------------------------------------------------------------------------

    def _send(self, message) -> None:
        self._check()
        for conn in self.conns:
            try:
                conn.send(message)
            except (BrokenPipeError, ConnectionResetError, EOFError, OSError) as error:
                raise self.collective_failed(error) from error

    def _check(self) -> None:
        if self.failure is not None:
            raise self.failure
        try:
            self._raise_if_dead(self.processes, self.conns)
        except WorkerFailure as failure:
            raise self._fail(failure) from None

    def _fail(self, failure: WorkerFailure) -> WorkerFailure:
        if self.failure is None:
            self.failure = failure
            self._finalizer()  # the group is broken: stop every worker now
        return self.failure

    def _expect_ready(self, timeout: float) -> None:
        for conn in self.conns:
            answer = self._receive(conn, timeout)
            if not isinstance(answer, Ready):
                raise self._fail(WorkerFailure(f"unexpected answer {answer!r} from a tensor-parallel worker"))

    def _receive(self, conn, timeout: float):
        deadline = time.monotonic() + timeout
        while not conn.poll(POLL_S):
            self._check()
            if time.monotonic() > deadline:
                raise self._fail(WorkerFailure(f"a tensor-parallel worker did not answer within {timeout:.0f} s"))
        answer = conn.recv()
        if isinstance(answer, Failed):
            raise self._fail(WorkerFailure(f"tensor-parallel worker rank {answer.rank} failed:\n{answer.traceback}"))
        return answer

    @staticmethod
    def _raise_if_dead(processes: list, conns: list) -> None:
        for rank, (process, conn) in enumerate(zip(processes, conns), start=1):
            if process.exitcode is None:
                continue
            detail = ""
            try:  # a worker that raised sent its traceback before exiting
                while conn.poll():
                    message = conn.recv()
                    if isinstance(message, Failed):
                        detail = f":\n{message.traceback}"
            except (EOFError, OSError):
                pass
            signal = " (killed by a signal)" if process.exitcode < 0 else ""
            raise WorkerFailure(
                f"tensor-parallel worker rank {rank} (pid {process.pid}) died with exit code "
                f"{process.exitcode}{signal}{detail}"
            )
