"""One simulated run: the real Engine with a virtual-clock executor and copy engine, over a workload.

Everything the paper measures except the GPU work is the library's real code: the scheduler and its
policies, the block-group allocators, the swap manager and its reuse bookkeeping. Only the forward
pass (priced by the roofline cost model) and the copies (priced per call and per byte, queued per
link direction) are simulated, so a run of 1,000 conversations takes minutes on a laptop CPU and is
a pure function of its inputs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from fastswitch.config import EngineConfig
from fastswitch.engine import HOST_BLOCKS_PER_DEVICE_BLOCK, Engine
from fastswitch.sim.clock import CopyQueues, VirtualClock
from fastswitch.sim.copy_engine import VirtualCopyEngine
from fastswitch.sim.cost_model import CostModel
from fastswitch.sim.executor import VirtualExecutor
from fastswitch.sim.hardware import HardwareProfile
from fastswitch.sim.model_shapes import ModelShape
from fastswitch.sim.workload_driver import replay
from fastswitch.workloads import Workload

CDF_POINTS = 200  # quantiles kept per latency distribution: enough for a smooth CDF plot, small JSON


@dataclass
class SimulatedEngine:
    engine: Engine
    clock: VirtualClock
    executor: VirtualExecutor
    copies: CopyQueues


def build_simulated_engine(
    config: EngineConfig, model: ModelShape, hardware: HardwareProfile, max_model_len: int | None = None
) -> SimulatedEngine:
    """An Engine whose executor and copy engine run on a virtual clock priced for model on hardware."""
    if config.num_gpu_blocks is None:
        raise ValueError("num_gpu_blocks=None: a simulated engine needs an explicit device pool size")
    max_model_len = max_model_len or config.max_model_len
    if max_model_len is None:
        raise ValueError("max_model_len=None: give it in the config or as an argument")
    clock = VirtualClock()
    cost_model = CostModel(model, hardware)
    queues = CopyQueues(cost_model)
    executor = VirtualExecutor(cost_model, clock)
    copy_engine = VirtualCopyEngine(queues, clock)
    engine = Engine(
        config, executor, copy_engine,
        num_gpu_blocks=config.num_gpu_blocks,
        num_cpu_blocks=config.num_cpu_blocks or HOST_BLOCKS_PER_DEVICE_BLOCK * config.num_gpu_blocks,
        num_layers=model.num_layers,
        block_bytes=model.kv_block_bytes(config.block_size),
        max_model_len=max_model_len,
    )  # fmt: skip
    return SimulatedEngine(engine, clock, executor, queues)


def cdf_points(values: list[float], count: int = CDF_POINTS) -> list[float]:
    """`count` evenly spaced quantiles (0 to 100%) of values: a compact CDF."""
    if not values:
        return []
    return np.quantile(np.asarray(values, dtype=np.float64), np.linspace(0.0, 1.0, count)).tolist()


def simulate(
    config: EngineConfig,
    model: ModelShape,
    hardware: HardwareProfile,
    workload: Workload,
    progress: bool = False,
) -> dict:
    """Runs workload through a simulated engine; returns the run's metrics and statistics as a dict."""
    sim = build_simulated_engine(config, model, hardware)
    started = time.perf_counter()
    replay(sim.engine, workload, sim.clock.advance_to, progress=progress)
    sim.engine.close()
    stats = sim.engine.stats()
    run_metrics = sim.engine.run_metrics
    return {
        **stats,
        "simulated_time_s": sim.clock.now,
        "executor_busy_s": sim.executor.busy_time,
        "num_forwards": sim.executor.num_forwards,
        "link_busy_s": {d: s.busy_time for d, s in sim.copies.stats.items()},
        "wall_time_s": time.perf_counter() - started,
        "ttft_cdf": cdf_points(run_metrics.ttfts),
        "tbt_cdf": cdf_points(run_metrics.tbts),
    }
