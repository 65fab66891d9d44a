"""The roofline cost model: how long a forward step and a host<->device copy take on a profile.

A forward step runs two kinds of work one after the other, and each is priced by its own roofline
(the slower of its compute time and its memory time), then a fixed per-step overhead is added:

- the matmuls (q/k/v/o, SwiGLU MLP of every layer, and the LM head for each sequence's last token):
  FLOPs 2 * params * tokens; bytes = every weight once per step (the whole batch shares one read)
  + the activations each matmul reads and writes;
- attention: new token i of a sequence with c cached tokens attends to c + i + 1 positions, 4 * heads *
  head_dim FLOPs per pair and layer (QK^T and PV); bytes = the K/V of all c + n positions read, and
  the n new positions written.

Pricing the two parts apart, rather than one roofline over the sum, matters for mixed batches: decode
attention stays memory-bound even when a long prefill makes the matmuls compute-bound.

A copy costs a fixed latency per copy call plus bytes over the link rate of its direction, so one
copy of a whole block group is far cheaper than one copy per block per layer per K/V of equal bytes;
the host CPU time to issue each call (`copy_call_cpu_us`) comes on top, as the calls are issued one
after another by the thread that copies.

Tensor parallelism (a shard's shape, `ModelShape.shard`): the rooflines price one GPU's share (its
heads, KV and MLP rows; the whole LM head, which rank 0 runs), and each layer adds its two
all-reduces of the step's activations (tokens x hidden_size) over the GPU link, priced as a ring:
2 (n - 1) / n of the bytes over `gpu_link_gbs` (NCCL's bus-bandwidth relation, nccl-tests
PERFORMANCE.md) plus `allreduce_latency_us`. Copies need nothing new: each GPU moves its own KV
shard over its own host link, in parallel, so a job's bytes are one shard's.

A profile with `linear_step_us` (a calibrated CPU) prices a step by that measured line instead of the
rooflines: fixed + per token x tokens + per sequence x sequences + per 1,000 attended pairs x pairs,
and, with a 5th coefficient, a fixed extra for a step of more than one new token in all (`step_features`).
That extra is what a CPU shows: a step of one token runs every matmul as a matrix-vector product, and
a second token, in the same sequence or another, switches them to matrix-matrix kernels with a set-up
cost of their own (SmolLM2-135M on one core: ~57 ms for 1 token, ~72 ms for 2 by the slope of larger
steps). Profiles of 4 coefficients (fitted before the term) price exactly as they did.
The host's own time per step (scheduler and bookkeeping, `scheduler_step_us` + `scheduler_seq_us` per
sequence) is priced apart, by `host_step_time`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fastswitch.sim.hardware import US, HardwareProfile
from fastswitch.sim.model_shapes import ModelShape


def attended_pairs(new: int, cached: int) -> float:
    """(query, key) pairs of a chunk: new token i attends to the cached tokens and to new tokens 0..i."""
    return new * cached + new * (new + 1) / 2


def step_features(batch: Sequence[tuple[int, int]]) -> list[float]:
    """The regressors of `linear_step_us`, in its order: [1, new tokens, sequences, attended pairs / 1,000,
    1 if the step has more than one new token else 0]. A 4-coefficient profile reads the first four."""
    tokens = sum(new for new, _ in batch)
    pairs = sum(attended_pairs(new, cached) for new, cached in batch)
    return [1.0, float(tokens), float(len(batch)), pairs / 1000.0, 1.0 if tokens > 1 else 0.0]


def linear_step_time_us(coefficients: Sequence[float], batch: Sequence[tuple[int, int]]) -> float:
    """Microseconds a `linear_step_us` line of 4 or 5 coefficients prices batch at."""
    return sum(c * f for c, f in zip(coefficients, step_features(batch)))


@dataclass(frozen=True)
class StepCost:
    """The priced parts of one forward step (seconds, FLOPs, bytes)."""

    num_tokens: int
    num_seqs: int
    matmul_flops: float
    matmul_bytes: float
    attention_flops: float
    attention_bytes: float
    matmul_time: float
    attention_time: float
    overhead_time: float
    matmul_compute_bound: bool  # the matmuls are limited by FLOPs (prefill-heavy), not by memory (decode)
    allreduce_time: float = 0.0  # tensor parallelism: the layers' all-reduces over the GPU link

    @property
    def total_time(self) -> float:
        return self.matmul_time + self.attention_time + self.overhead_time + self.allreduce_time


class CostModel:
    """Prices forward steps and copies of one model on one hardware profile."""

    def __init__(self, model: ModelShape, hardware: HardwareProfile) -> None:
        if model.tensor_parallel_size > 1 and hardware.linear_step_us is not None:
            raise ValueError(
                f"model {model.name!r} is a tensor-parallel shard but profile {hardware.name!r} prices steps by "
                "a line measured on one unsharded CPU process (linear_step_us)"
            )
        self.model = model
        self.hardware = hardware
        self.tensor_parallel_size = model.tensor_parallel_size

    def allreduce_time(self, num_tokens: int) -> float:
        """Seconds of one step's all-reduces (two per layer over tokens x hidden activations); 0 on one GPU."""
        n, m, hw = self.tensor_parallel_size, self.model, self.hardware
        if n == 1 or num_tokens == 0:
            return 0.0
        message = num_tokens * m.hidden_size * m.dtype_bytes
        one = 2 * (n - 1) / n * message / hw.gpu_link_bandwidth + hw.allreduce_latency_us * US
        return 2 * m.num_layers * one

    def step_cost(self, batch: Sequence[tuple[int, int]]) -> StepCost:
        """batch: one (new tokens, cached tokens) pair per sequence of the step. An empty batch costs 0."""
        for new, cached in batch:
            if new < 1 or cached < 0:
                raise ValueError(f"batch entry (new={new}, cached={cached}) needs new >= 1 and cached >= 0")
        m, hw = self.model, self.hardware
        num_seqs = len(batch)
        if num_seqs == 0:
            return StepCost(0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, False)
        num_tokens = sum(new for new, _ in batch)

        matmul_flops = 2.0 * m.num_layers * m.layer_matmul_params * num_tokens
        matmul_flops += 2.0 * m.lm_head_params * num_seqs  # logits of each sequence's last token only
        matmul_bytes = float(m.weight_bytes_per_step + m.activation_bytes_per_token * num_tokens)
        matmul_bytes += num_seqs * m.vocab_size * m.dtype_bytes  # the logits written
        flop_time = matmul_flops / hw.effective_flops
        byte_time = matmul_bytes / hw.effective_bandwidth
        matmul_time = max(flop_time, byte_time)

        pairs = sum(attended_pairs(new, cached) for new, cached in batch)
        attention_flops = 4.0 * m.num_layers * m.num_heads * m.head_dim * pairs
        touched_positions = sum(cached + 2 * new for new, cached in batch)  # read cached + new, write new
        attention_bytes = float(m.kv_bytes_per_token * touched_positions)
        attention_time = max(attention_flops / hw.effective_flops, attention_bytes / hw.effective_bandwidth)

        return StepCost(
            num_tokens=num_tokens,
            num_seqs=num_seqs,
            matmul_flops=matmul_flops,
            matmul_bytes=matmul_bytes,
            attention_flops=attention_flops,
            attention_bytes=attention_bytes,
            matmul_time=matmul_time,
            attention_time=attention_time,
            overhead_time=hw.step_overhead_us * US,
            matmul_compute_bound=flop_time >= byte_time,
            allreduce_time=self.allreduce_time(num_tokens),
        )

    def forward_time(self, batch: Sequence[tuple[int, int]]) -> float:
        """Seconds of one forward step over batch = [(new tokens, cached tokens), ...]."""
        if self.hardware.linear_step_us is None or not batch:
            return self.step_cost(batch).total_time
        return linear_step_time_us(self.hardware.linear_step_us, batch) * US

    def host_step_time(self, num_seqs: int) -> float:
        """Seconds the host spends on one step outside the forward (schedule, update) for num_seqs sequences."""
        return (self.hardware.scheduler_step_us + self.hardware.scheduler_seq_us * num_seqs) * US

    def copy_issue_time(self, num_calls: int) -> float:
        """Host CPU seconds to issue num_calls copy calls."""
        return num_calls * self.hardware.copy_call_cpu_us * US

    def copy_time(self, num_bytes: int, num_calls: int, direction: str) -> float:
        """Seconds to move num_bytes in num_calls copy calls, "h2d" (swap-in) or "d2h" (swap-out)."""
        if num_bytes < 0 or num_calls < 0:
            raise ValueError(f"num_bytes={num_bytes} and num_calls={num_calls} must be >= 0")
        if num_bytes > 0 and num_calls == 0:
            raise ValueError(f"num_bytes={num_bytes} cannot move in num_calls=0 copy calls")
        bandwidth = self.hardware.link_bandwidth(direction)
        link_time = num_calls * self.hardware.copy_call_latency_us * US + num_bytes / bandwidth
        return self.copy_issue_time(num_calls) + link_time
