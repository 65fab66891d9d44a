"""One simulated run: the real Engine with a virtual-clock executor and copy engine, over a workload.

Everything the paper measures except the GPU work is the library's real code: the scheduler and its
policies, the block-group allocators, the swap manager and its reuse bookkeeping. Only the forward
pass (priced by the roofline cost model) and the copies (priced per call and per byte, queued per
link direction) are simulated, so a run of 1,000 conversations takes minutes on a laptop CPU and is
a pure function of its inputs.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from fastswitch.build import kv_caches, pool_sizes
from fastswitch.cache.copy_engine import TorchCopyEngine
from fastswitch.config import EngineConfig
from fastswitch.engine import Engine
from fastswitch.executor import ModelExecutor
from fastswitch.models.runner import ModelRunner
from fastswitch.models.sampling import Sampler
from fastswitch.sim.clock import CopyQueues, HostContention, VirtualClock
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
    """An engine on virtual time, with the virtual pieces behind it kept at hand for inspection."""

    engine: Engine
    clock: VirtualClock
    executor: VirtualExecutor
    copies: CopyQueues


def build_simulated_engine(
    config: EngineConfig, model: ModelShape, hardware: HardwareProfile, max_model_len: int | None = None
) -> SimulatedEngine:
    """An Engine whose executor and copy engine run on a virtual clock priced for model on hardware.
    Its pools are sized by fastswitch/build.py pool_sizes (num_gpu_blocks and max_model_len, from the
    config or the argument, must be given: there is no model to default them from)."""
    sizes = pool_sizes(config if max_model_len is None else dataclasses.replace(config, max_model_len=max_model_len))
    clock = VirtualClock()
    cost_model = CostModel(model, hardware)
    queues = CopyQueues(cost_model)
    contention = HostContention()
    executor = VirtualExecutor(cost_model, clock, contention=contention, seed=config.seed)
    copy_engine = VirtualCopyEngine(queues, clock, contention=contention)
    engine = Engine(
        config, executor, copy_engine,
        num_gpu_blocks=sizes.num_gpu_blocks,
        num_cpu_blocks=sizes.num_cpu_blocks,
        num_layers=model.num_layers,
        block_bytes=model.kv_block_bytes(config.block_size),
        max_model_len=sizes.max_model_len,
    )  # fmt: skip
    return SimulatedEngine(engine, clock, executor, queues)


def build_real_engine_on_virtual_time(
    model, config: EngineConfig, cost_model: CostModel, max_model_len: int, eos_token_ids: tuple[int, ...] = ()
) -> SimulatedEngine:
    """The real engine over a LlamaForServing (model forward, sampling, KV copies all really run), with
    step and copy times taken from cost_model on a virtual clock instead of the wall clock.

    Given the same cost model and workload it must make exactly the decisions of the simulated engine:
    the check that the simulator's only departure from a real run is the time it charges. It is also
    how a calibrated profile's predictions are set beside a real run of the same workload.
    """
    sizes = pool_sizes(dataclasses.replace(config, max_model_len=max_model_len))
    device_cache, host_cache = kv_caches(model, config, sizes)
    clock = VirtualClock()
    queues = CopyQueues(cost_model)
    contention = HostContention()
    real = ModelExecutor(ModelRunner(model, device_cache, backend=config.attention_backend), Sampler(), config.seed)
    executor = VirtualExecutor(cost_model, clock, backing=real, contention=contention, seed=config.seed)
    # The real copies run synchronously at submit; completion is still reported on the virtual clock.
    copy_engine = VirtualCopyEngine(queues, clock, backing=TorchCopyEngine(device_cache, host_cache),
                                    contention=contention)  # fmt: skip
    engine = Engine(
        config, executor, copy_engine,
        num_gpu_blocks=sizes.num_gpu_blocks, num_cpu_blocks=sizes.num_cpu_blocks, num_layers=model.num_layers,
        block_bytes=device_cache.block_bytes, max_model_len=sizes.max_model_len, eos_token_ids=eos_token_ids,
        vocab_size=model.vocab_size,
    )  # fmt: skip
    return SimulatedEngine(engine, clock, executor, queues)


def mean_swap_latency(copies: CopyQueues) -> float:
    """Mean seconds one sequence's swap (one copy job, either direction) takes from the start of its
    copy to its landing: issue time, per-call latencies and bytes, queueing behind other copies left
    out. The context-switch latency that block groups cut (the paper: up to 3.11x). NaN with no swaps."""
    jobs = sum(s.copies for s in copies.stats.values())
    return sum(s.busy_time for s in copies.stats.values()) / jobs if jobs else float("nan")


def cdf_points(values: Collection[float], count: int = CDF_POINTS) -> list[float]:
    """`count` evenly spaced quantiles (0 to 100%) of values: a compact CDF."""
    if not values:
        return []
    return np.quantile(np.asarray(list(values), dtype=np.float64), np.linspace(0.0, 1.0, count)).tolist()


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
        "policy": sim.engine.scheduler.policy.name,
        "simulated_time_s": sim.clock.now,
        "executor_busy_s": sim.executor.busy_time,
        "host_time_s": sim.executor.host_time,
        "num_forwards": sim.executor.num_forwards,
        "link_busy_s": {d: s.busy_time for d, s in sim.copies.stats.items()},
        "mean_swap_latency_s": mean_swap_latency(sim.copies),
        "wall_time_s": time.perf_counter() - started,
        "ttft_cdf": cdf_points(run_metrics.ttfts),
        "tbt_cdf": cdf_points(run_metrics.tbts),
    }
