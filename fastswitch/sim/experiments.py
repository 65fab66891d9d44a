"""Named experiments: the paper's two setups, its ablation and a rate sweep, as data.

An `Experiment` fixes the model, the hardware, the workload and the engine settings; `presets`
lists the engine variants to compare, each a preset name ("vllm", "fastswitch") or an ablation step
written "vllm+block_groups+async_swap" (the vllm preset with those mechanisms switched on).

Load: the paper states "Poisson arrivals at 1 request/s". `rate` is read as requests, i.e. turns, per
second: conversations start at rate / mean turns (1 / 5.5 per second), and each next turn follows its
answer after a think time. Reading it as one new *conversation* per second instead would ask for
about 1,860 generated tokens/s, several times what the simulated A10 serves with Llama-3-8B (its
~34k-token KV pool holds only ~15 multi-turn contexts), so every queue would grow without bound.

Sizing follows vLLM 0.3.3, the paper's baseline: the device KV pool is what remains of
`gpu_memory_utilization` (0.9) of the device memory the driver reports (binary GiB, see
fastswitch/sim/hardware.py) after the weights and the peak activations of a profiling forward at
vLLM 0.3.3's token budget (max(max_model_len, 2048) tokens over max_num_seqs sequences); the host
pool is the paper's 60 GB of swap space per GPU (vLLM's `swap_space` is in GiB: 60 GiB).

Scheduling: every preset runs in `scheduler_mode="vllm-0.3.3"` (fastswitch/sched/vllm_scheduler.py),
the structure of the paper's baseline and of FastSwitch, which was built on it; `scheduler_mode=
"chunked"` runs this library's chunked-prefill scheduler instead, an experiment beyond the paper.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from fastswitch.config import PRESETS, EngineConfig
from fastswitch.sched.policies import is_policy_object
from fastswitch.sim.hardware import GIB, HardwareProfile, get_profile
from fastswitch.sim.model_shapes import ModelShape, get_model_shape
from fastswitch.workloads import MULTI_ROUND_SHAREGPT_MEAN_TURNS

MECHANISMS = ("block_groups", "async_swap", "kv_reuse", "keep_turn_kv")
# The paper's ablation adds one mechanism at a time to the vLLM baseline.
ABLATION_PRESETS = ("vllm", "vllm+block_groups", "vllm+block_groups+async_swap", "fastswitch")

# vLLM 0.3.3's prefill token budget when none is given: max(max_model_len, 2048) (its SchedulerConfig).
VLLM_MIN_BATCHED_TOKENS = 2048


@dataclass(frozen=True)
class Experiment:
    name: str
    model: str
    hardware: str
    presets: tuple[str, ...] = ("vllm", "fastswitch")
    num_conversations: int = 1000
    rate: float = 1.0  # requests (turns) per second; conversations start at rate / mean turns
    seeds: tuple[int, ...] = (0,)
    rates: tuple[float, ...] = ()  # a sweep over request rates when not empty
    host_swap_gib: float = 60.0
    gpu_memory_utilization: float = 0.9
    engine: dict = field(default_factory=dict)  # EngineConfig overrides shared by every preset
    workload: dict = field(default_factory=dict)  # synthetic_sharegpt overrides
    description: str = ""
    scheduler_mode: str = "vllm-0.3.3"  # EngineConfig.scheduler_mode of every preset

    @property
    def mean_turns(self) -> float:
        return self.workload.get("mean_turns", MULTI_ROUND_SHAREGPT_MEAN_TURNS)

    def conversation_rate(self, request_rate: float) -> float:
        """Conversation arrivals per second that give request_rate turns per second on average."""
        return request_rate / self.mean_turns

    def replace(self, **changes) -> Experiment:
        return dataclasses.replace(self, **changes)

    def model_shape(self) -> ModelShape:
        return get_model_shape(self.model)

    def hardware_profile(self) -> HardwareProfile:
        return get_profile(self.hardware)

    def kv_pool_blocks(self, block_size: int) -> tuple[int, int]:
        """(device blocks, host blocks) for this model on this hardware."""
        shape, hw = self.model_shape(), self.hardware_profile()
        block_bytes = shape.kv_block_bytes(block_size)
        max_model_len = self.engine.get("max_model_len", 8192)
        activations = shape.profile_activation_bytes(max(max_model_len, VLLM_MIN_BATCHED_TOKENS),
                                                     self.engine.get("max_num_seqs", 256))  # fmt: skip
        weights = shape.num_params * shape.dtype_bytes
        free = hw.memory_bytes * self.gpu_memory_utilization - weights - activations
        device_blocks = int(free // block_bytes)
        if device_blocks < 1:
            raise ValueError(
                f"model {shape.name} ({weights / GIB:.1f} GiB of weights, {activations / GIB:.2f} GiB of "
                f"activations) leaves no room for KV on {hw.name} ({hw.memory_gib:.2f} GiB at "
                f"gpu_memory_utilization={self.gpu_memory_utilization})"
            )
        return device_blocks, int(self.host_swap_gib * GIB // block_bytes)

    def engine_config(self, preset: str, seed: int) -> EngineConfig:
        """The EngineConfig of one preset (or ablation step) of this experiment."""
        if is_policy_object(self.engine.get("policy")):
            raise ValueError(
                f"policy={self.engine['policy']!r}: an experiment builds one engine per (rate, seed, preset) and a "
                "policy object keeps one engine's state; give a policy name, class or factory"
            )
        if "scheduler_mode" in self.engine:
            raise ValueError("set the scheduler mode with Experiment.scheduler_mode, not in its engine overrides")
        base, *extras = preset.split("+")
        unknown = [m for m in extras if m not in MECHANISMS]
        if base not in PRESETS or unknown:
            raise ValueError(
                f"preset={preset!r}: expected one of {tuple(PRESETS)} optionally followed by "
                f"'+mechanism' with mechanisms from {MECHANISMS}"
            )
        block_size = self.engine.get("block_size", 16)
        device_blocks, host_blocks = self.kv_pool_blocks(block_size)
        overrides = {"num_gpu_blocks": device_blocks, "num_cpu_blocks": host_blocks, "seed": seed,
                     "scheduler_mode": self.scheduler_mode, **self.engine}  # fmt: skip
        overrides.update({m: True for m in extras})
        return EngineConfig.from_preset(base, **overrides)


# The paper's settings (arXiv 2411.18424, evaluation section): priority scheduling with priorities re-drawn at an
# update frequency of 0.04 (Llama-8B) or 0.02 (Qwen-32B), Multi-Round ShareGPT at 1 req/s, 60 GB swap.
_PAPER_ENGINE = {"policy": "priority", "priority_pattern": "random", "max_num_seqs": 256, "max_model_len": 8192}

EXPERIMENTS: dict[str, Experiment] = {
    "llama8b-a10": Experiment(
        "llama8b-a10", "llama-3-8b", "a10",
        engine={**_PAPER_ENGINE, "priority_update_freq": 0.04},
        description="Llama-3-8B on an A10 24 GB, random priorities re-drawn with frequency 0.04",
    ),
    "qwen32b-a100": Experiment(
        "qwen32b-a100", "qwen2.5-32b", "a100",
        engine={**_PAPER_ENGINE, "priority_update_freq": 0.02},
        description="Qwen2.5-32B on an A100 80 GB, random priorities re-drawn with frequency 0.02",
    ),
    "llama8b-a10-markov": Experiment(
        "llama8b-a10-markov", "llama-3-8b", "a10",
        engine={**_PAPER_ENGINE, "priority_update_freq": 0.04, "priority_pattern": "markov"},
        description="as llama8b-a10 with the markov priority pattern",
    ),
    "qwen32b-a100-markov": Experiment(
        "qwen32b-a100-markov", "qwen2.5-32b", "a100",
        engine={**_PAPER_ENGINE, "priority_update_freq": 0.02, "priority_pattern": "markov"},
        description="as qwen32b-a100 with the markov priority pattern",
    ),
    "ablation-llama8b-a10": Experiment(
        "ablation-llama8b-a10", "llama-3-8b", "a10", presets=ABLATION_PRESETS,
        engine={**_PAPER_ENGINE, "priority_update_freq": 0.04},
        description="one mechanism at a time on top of vLLM, Llama-3-8B on an A10",
    ),
    "rate-sweep-llama8b-a10": Experiment(
        "rate-sweep-llama8b-a10", "llama-3-8b", "a10", rates=(0.5, 0.75, 1.0, 1.25, 1.5),
        engine={**_PAPER_ENGINE, "priority_update_freq": 0.04},
        description="request rate sweep, Llama-3-8B on an A10",
    ),
    # A small run for smoke tests and the README's quick start: 50 conversations in seconds.
    "smoke": Experiment(
        "smoke", "llama-3-8b", "a10", num_conversations=50, rate=5.0,
        engine={**_PAPER_ENGINE, "priority_update_freq": 0.04},
        description="50 conversations of the llama8b-a10 setup, for a quick check",
    ),
}  # fmt: skip


def get_experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ValueError(f"experiment={name!r} is not one of {sorted(EXPERIMENTS)}")
    return EXPERIMENTS[name]
