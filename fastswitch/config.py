"""EngineConfig: every knob of the engine, and the presets that set the paper's mechanisms.

Each FastSwitch mechanism is one switch, so an ablation is one flag:

- `block_groups`: allocate KV blocks in contiguous groups that grow in place and move a group in one
  copy. Off, blocks are handed out one at a time and a swap copies one block per layer per K/V, as
  vLLM 0.3.3 does.
- `async_swap`: swaps run on a worker thread (and CUDA stream), overlapped with the forward pass.
- `kv_reuse`: the host keeps a conversation's KV after swap-in, so a later swap-out copies only new blocks.

Two more settings make the `vllm` preset the paper's baseline rather than this library's scheduler
with FastSwitch's mechanisms off:

- `keep_turn_kv`: a finished conversation turn leaves its KV behind (on the device until memory is
  needed, then on the host), so the next turn prefills only its new tokens. Off, every turn is a new
  request whose whole history is prefilled again, as in vLLM 0.3.3, which has no prefix caching. A
  conversation gives the same answers either way (greedy decoding recomputes the same KV).
  `kv_reuse` stays meaningful without it: a request preempted more than once still swaps out only
  the blocks added since its last swap-in. The `vllm` preset sets it off, `fastswitch` on.
- `scheduler_mode`: "chunked" (the default) is this library's scheduler (sched/scheduler.py):
  chunked prefill in mixed batches, preemptive admission by policy rank. "vllm-0.3.3" reproduces the
  scheduling structure of vLLM 0.3.3 (sched/vllm_scheduler.py): prompt-only steps without chunking,
  swapped requests resumed before waiting ones, no swap-in in a step that swaps out, a 1% free-block
  watermark. The paper's experiments (fastswitch/sim/experiments.py) run both presets in it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from fastswitch.sched.policies import DEFAULT_VTC_WEIGHTS, PolicySpec, check_policy_spec

PRIORITY_PATTERNS = ("random", "markov")
PREEMPTION_MODES = ("swap", "recompute")
SCHEDULER_MODES = ("chunked", "vllm-0.3.3")
ATTENTION_BACKENDS = ("auto", "triton", "torch")
DTYPES = ("auto", "float32", "float16", "bfloat16")

PRESETS: dict[str, dict[str, bool]] = {
    "vllm": {"block_groups": False, "async_swap": False, "kv_reuse": False, "keep_turn_kv": False},
    "fastswitch": {"block_groups": True, "async_swap": True, "kv_reuse": True, "keep_turn_kv": True},
}


@dataclass
class EngineConfig:
    # KV cache. None: sized by fastswitch/build.py (the device pool from max_num_seqs * max_model_len, the
    # host pool 4x the device's; on a CPU at most 256 MiB of device KV and 2048 tokens).
    block_size: int = 16
    num_gpu_blocks: int | None = None
    num_cpu_blocks: int | None = None
    max_model_len: int | None = None  # None: the model's max_position_embeddings

    # Batching.
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 2048

    # Scheduling. policy: a registered name ("fcfs", "priority", "vtc", "mlfq", ...), a policy object, or
    # a class / factory making one per engine (sched/policies.py). priority_update_freq is the paper's
    # per-iteration probability that priorities are re-drawn: a workload replay reads it as a rate in
    # time through the workload's precomputed trace (sched/priority_trace.py), an engine driven
    # directly re-draws per iteration (sched/priority_patterns.py).
    policy: PolicySpec = "fcfs"
    priority_pattern: str = "random"
    priority_update_freq: float = 0.0
    num_priority_levels: int = 4
    vtc_input_weight: float = DEFAULT_VTC_WEIGHTS[0]  # policy "vtc" only
    vtc_output_weight: float = DEFAULT_VTC_WEIGHTS[1]
    preemption_mode: str = "swap"
    scheduler_mode: str = "chunked"  # or "vllm-0.3.3" (module docstring)
    keep_turn_kv: bool = True  # a finished conversation turn's KV is kept for the next turn

    # The three FastSwitch mechanisms.
    block_groups: bool = True
    async_swap: bool = True
    kv_reuse: bool = True

    # The adaptive sync/async swap rule (with async_swap; sched/adaptive_swap.py): a swap whose estimated
    # copy time, times the requests of the last batch (who all wait for it), is at most
    # sync_swap_fraction of the recent step time is waited for when the batch would otherwise
    # shrink; until copies and steps have been timed, one of at most adaptive_sync_blocks blocks is.
    # 0.1: the best of 0-1 in benchmarks/swap_rule_sweep.py on simulated Llama-3-8B / A10 (README).
    sync_swap_fraction: float = 0.1
    adaptive_sync_blocks: int = 4

    # Execution.
    attention_backend: str = "auto"
    dtype: str = "auto"
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        check_policy_spec(self.policy)
        choices = {
            "priority_pattern": PRIORITY_PATTERNS,
            "preemption_mode": PREEMPTION_MODES,
            "scheduler_mode": SCHEDULER_MODES,
            "attention_backend": ATTENTION_BACKENDS,
            "dtype": DTYPES,
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not one of {allowed}")
        positive = ["block_size", "max_num_seqs", "max_num_batched_tokens", "num_priority_levels"]
        positive += [n for n in ("num_gpu_blocks", "num_cpu_blocks", "max_model_len") if getattr(self, n) is not None]
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        blocks = self.adaptive_sync_blocks
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 0:
            raise ValueError(f"adaptive_sync_blocks={blocks!r} must be an integer >= 0")
        fraction = self.sync_swap_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not fraction >= 0:
            raise ValueError(f"sync_swap_fraction={fraction!r} must be a number >= 0")
        if not 0.0 <= self.priority_update_freq <= 1.0:
            raise ValueError(f"priority_update_freq={self.priority_update_freq!r} must lie in [0, 1]")
        if self.vtc_input_weight < 0 or self.vtc_output_weight < 0:
            raise ValueError(
                f"VTC weights must be >= 0, got vtc_input_weight={self.vtc_input_weight!r}, "
                f"vtc_output_weight={self.vtc_output_weight!r}"
            )
        weights = (self.vtc_input_weight, self.vtc_output_weight)
        if self.policy != "vtc" and weights != DEFAULT_VTC_WEIGHTS:
            raise ValueError(
                f"vtc_input_weight={weights[0]!r}, vtc_output_weight={weights[1]!r} are read by policy='vtc' "
                f"only; policy={self.policy!r} would ignore them (a VTCPolicy object or class carries its own)"
            )

    @classmethod
    def from_preset(cls, preset: str = "fastswitch", **overrides) -> EngineConfig:
        if preset not in PRESETS:
            raise ValueError(f"preset={preset!r} is not one of {tuple(PRESETS)}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown EngineConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**{**PRESETS[preset], **overrides})
