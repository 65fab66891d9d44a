"""Hardware profiles: what the cost model needs to know about a GPU and its host link.

Every published figure carries its source beside it. Peak throughput is dense BF16/FP16 tensor-core
throughput (no sparsity); rates are decimal (GB/s = 1e9 B/s, as vendors quote them), while device
memory is binary (GiB = 2**30 B), as the driver reports it and as vLLM's `gpu_memory_utilization`
multiplies it (`torch.cuda.mem_get_info` total). The efficiency factors are not
properties of the chip but of software running on it; their defaults are the middles of the ranges
that LLM-serving simulators use (inference-sim's hardware guide: effective memory bandwidth 0.6-0.8 of
peak, prefill MFU 0.5-0.7, ~50-60 us per-step overhead). A calibrated profile measured on a real GPU
replaces them (`HardwareProfile.from_json`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import cast

GB = 1e9  # decimal, as vendors quote bandwidth
GIB = 2**30  # binary, as device memory is reported
MIB = 2**20
US = 1e-6

# Pinned host<->device copy rates per direction. PCIe 4.0 x16 signals 16 GT/s x 16 lanes with 128b/130b
# coding, 31.5 GB/s raw per direction (PCI-SIG PCIe 4.0 specification); pinned cudaMemcpy reaches about
# 25 GB/s of it (NVIDIA's bandwidthTest sample on A100/A10 servers). PCIe 5.0 doubles the raw rate
# (63 GB/s) and measured pinned copies reach 35-55 GB/s; we take 25 and 45, the middle of that range.
PCIE4_X16_GBS = 25.0
PCIE5_X16_GBS = 45.0

# Per-call cost of one cudaMemcpyAsync: 2-7 us reported. Fitted to published pinned-memory rates of a
# V100 on PCIe 3.0 (4 KB at 1.4 GB/s, 16 KB at 4.0, 32 KB at 5.9, 100 KB at 9.2, >= 2 MB at ~12.25,
# from NVIDIA's bandwidthTest in shmoo mode): size / measured rate - size / 12.25 GB/s gives 2.6, 2.8,
# 2.9 and 2.8 us, so 2.8 us per call.
COPY_CALL_LATENCY_US = 2.8

DEFAULT_MFU = 0.6  # middle of 0.5-0.7 (inference-sim hardware guide)
DEFAULT_BANDWIDTH_EFFICIENCY = 0.7  # middle of 0.6-0.8 (inference-sim hardware guide)
DEFAULT_STEP_OVERHEAD_US = 55.0  # middle of 50-60 us (inference-sim hardware guide)

# GPU-to-GPU links, per direction, for tensor-parallel all-reduces. NVLink: the A100 datasheet gives
# 600 GB/s of NVLink bandwidth per GPU and the H100 SXM datasheet 900 GB/s, both counting the two
# directions together: 300 and 450 GB/s each way. PCIe cards without a bridge go peer-to-peer over
# their PCIe 4.0 / 5.0 x16 slot, at the pinned copy rates above.
NVLINK3_GBS = 300.0
NVLINK4_GBS = 450.0
# Fixed cost of one all-reduce on one node. An assumption, not a published figure: NCCL's small-message
# all-reduces take some microseconds to tens of microseconds; 10 us, until a calibrated profile says.
DEFAULT_ALLREDUCE_LATENCY_US = 10.0


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    peak_tflops: float  # dense BF16/FP16 tensor throughput, 1e12 FLOP/s
    memory_bandwidth_gbs: float  # device memory (HBM/GDDR) bandwidth, GB/s
    memory_gib: float  # device memory the driver reports as total, GiB (what gpu_memory_utilization scales)
    h2d_gbs: float  # pinned host -> device copy rate, GB/s
    d2h_gbs: float  # pinned device -> host copy rate, GB/s
    copy_call_latency_us: float = COPY_CALL_LATENCY_US  # link time per copy call (DMA set-up)
    mfu: float = DEFAULT_MFU  # fraction of peak FLOPs that matmuls reach
    bandwidth_efficiency: float = DEFAULT_BANDWIDTH_EFFICIENCY  # fraction of peak memory bandwidth reached
    step_overhead_us: float = DEFAULT_STEP_OVERHEAD_US  # fixed cost of one forward step (launches, sync)
    # The link between GPUs of one machine, used by tensor-parallel all-reduces: GB/s per direction
    # (NVLink or PCIe peer-to-peer; defaults to the host link's rate) and a fixed cost per all-reduce.
    gpu_link_gbs: float | None = None
    allreduce_latency_us: float = DEFAULT_ALLREDUCE_LATENCY_US
    # Host-side costs (measured by fastswitch.sim.calibrate on the machine that serves; 0 in the built-in
    # GPU profiles, whose 2.8 us per copy call already holds a cudaMemcpyAsync's CPU cost):
    copy_call_cpu_us: float = 0.0  # CPU time the issuing thread spends per copy call (Python + dispatch)
    copy_thread_contention: float = 0.0  # share of the copy thread's issue time the stepping thread loses (GIL)
    scheduler_step_us: float = 0.0  # host time per engine step outside the forward (schedule, update)
    scheduler_seq_us: float = 0.0  # ... and per sequence of the step's batch
    # A measured linear forward-time model that replaces the roofline when set (a CPU, where neither
    # roofline holds): microseconds = fixed + per new token x tokens + per sequence x sequences + per
    # 1,000 attended (query, key) pairs x pairs / 1,000 [+ a fixed extra for a step of more than one new
    # token, the 5th coefficient, absent from older 4-coefficient profiles]. `cost_model.step_features`
    # gives the regressors. Fitted by fastswitch.sim.cpu_calibration.
    linear_step_us: tuple[float, ...] | None = None
    # Measured step-time jitter of a shared machine: quantiles of (measured / priced) step time. When
    # set, each simulated step's time (host + forward) is multiplied by one of them, drawn uniformly by
    # a generator seeded from the engine's seed (a run stays a pure function of its inputs).
    step_jitter: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        positive = ("peak_tflops", "memory_bandwidth_gbs", "memory_gib", "h2d_gbs", "d2h_gbs")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be > 0 (profile {self.name!r})")
        for name in ("mfu", "bandwidth_efficiency"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must lie in (0, 1] (profile {self.name!r})")
        link = min(self.h2d_gbs, self.d2h_gbs) if self.gpu_link_gbs is None else self.gpu_link_gbs  # PCIe p2p
        if not link > 0:
            raise ValueError(f"gpu_link_gbs={link!r} must be > 0 (profile {self.name!r})")
        object.__setattr__(self, "gpu_link_gbs", link)
        for name in ("copy_call_latency_us", "step_overhead_us", "copy_call_cpu_us", "scheduler_step_us",
                     "scheduler_seq_us", "allreduce_latency_us"):  # fmt: skip
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be >= 0 (profile {self.name!r})")
        if not 0 <= self.copy_thread_contention <= 1:
            raise ValueError(f"copy_thread_contention={self.copy_thread_contention!r} must lie in [0, 1] "
                             f"(profile {self.name!r})")  # fmt: skip
        if self.linear_step_us is not None:
            coefficients = tuple(float(c) for c in self.linear_step_us)
            if len(coefficients) not in (4, 5) or min(coefficients) < 0:
                raise ValueError(f"linear_step_us={self.linear_step_us!r} must be 4 or 5 coefficients >= 0 "
                                 f"(profile {self.name!r})")  # fmt: skip
            object.__setattr__(self, "linear_step_us", coefficients)  # a JSON list becomes the tuple
        if self.step_jitter is not None:
            factors = tuple(float(f) for f in self.step_jitter)
            if not factors or min(factors) <= 0:
                raise ValueError(f"step_jitter={self.step_jitter!r} must be factors > 0 (profile {self.name!r})")
            object.__setattr__(self, "step_jitter", factors)

    @property
    def gpu_link_bandwidth(self) -> float:
        """Bytes/s per direction between two GPUs of one machine (tensor-parallel all-reduces)."""
        return cast(float, self.gpu_link_gbs) * GB  # __post_init__ resolved None to the host link's rate

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * GIB)

    @property
    def effective_flops(self) -> float:
        """FLOP/s that a compute-bound kernel reaches."""
        return self.peak_tflops * 1e12 * self.mfu

    @property
    def effective_bandwidth(self) -> float:
        """Bytes/s that a memory-bound kernel reaches."""
        return self.memory_bandwidth_gbs * GB * self.bandwidth_efficiency

    def link_bandwidth(self, direction: str) -> float:
        """Bytes/s of the host link in one direction: "h2d" (swap-in) or "d2h" (swap-out)."""
        if direction == "h2d":
            return self.h2d_gbs * GB
        if direction == "d2h":
            return self.d2h_gbs * GB
        raise ValueError(f"direction={direction!r} is not one of ('h2d', 'd2h')")

    def replace(self, **changes) -> HardwareProfile:
        return dataclasses.replace(self, **changes)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> HardwareProfile:
        data = json.loads(Path(path).read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown profile field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)


# Usable capacity (memory_gib) is what the driver reports as total memory (nvidia-smi, and the total of
# torch.cuda.mem_get_info that vLLM multiplies by gpu_memory_utilization): an A10 "24 GB" card exposes
# 23,028 MiB (ECC and the driver's reservation take the rest); the A100 80 GB and H100 80 GB carry
# 80 GiB of HBM, of which we take all 80 GiB (the driver's reservation there is under 1%).
A10_MEMORY_GIB = 23028 * MIB / GIB
PROFILES: dict[str, HardwareProfile] = {
    # NVIDIA A10 datasheet: 125 TFLOPS BF16 dense, 24 GB GDDR6 at 600 GB/s, PCIe 4.0 x16.
    "a10": HardwareProfile("a10", 125.0, 600.0, A10_MEMORY_GIB, PCIE4_X16_GBS, PCIE4_X16_GBS),
    # NVIDIA A100 datasheet: 312 TFLOPS BF16 dense; 80 GB PCIe card at 1,935 GB/s, PCIe 4.0 x16.
    "a100-80gb-pcie": HardwareProfile("a100-80gb-pcie", 312.0, 1935.0, 80.0, PCIE4_X16_GBS, PCIE4_X16_GBS),
    # NVIDIA A100 datasheet: 80 GB SXM module at 2,039 GB/s; its host link is still PCIe 4.0 x16.
    "a100-80gb-sxm": HardwareProfile(
        "a100-80gb-sxm", 312.0, 2039.0, 80.0, PCIE4_X16_GBS, PCIE4_X16_GBS, gpu_link_gbs=NVLINK3_GBS
    ),
    # NVIDIA H100 datasheet: SXM 989 TFLOPS BF16 dense, 80 GB HBM3 at 3.35 TB/s, PCIe 5.0 x16 host link.
    "h100-sxm": HardwareProfile(
        "h100-sxm", 989.0, 3350.0, 80.0, PCIE5_X16_GBS, PCIE5_X16_GBS, gpu_link_gbs=NVLINK4_GBS
    ),
    # NVIDIA H100 datasheet: PCIe card 756 TFLOPS BF16 dense, 80 GB HBM2e at 2.0 TB/s, PCIe 5.0 x16.
    "h100-pcie": HardwareProfile("h100-pcie", 756.0, 2000.0, 80.0, PCIE5_X16_GBS, PCIE5_X16_GBS),
}
# The paper's Qwen-32B machine is "an A100 80 GB"; the PCIe card is the common one in PCIe 4.0 servers.
ALIASES = {"a100": "a100-80gb-pcie", "a100-80gb": "a100-80gb-pcie", "h100": "h100-sxm", "a10-24gb": "a10"}


def get_profile(name_or_path: str | Path) -> HardwareProfile:
    """A built-in profile by name (case-insensitive, aliases allowed) or a calibrated one from a JSON file."""
    key = str(name_or_path).lower()
    key = ALIASES.get(key, key)
    if key in PROFILES:
        return PROFILES[key]
    path = Path(name_or_path)
    if path.suffix == ".json" and path.is_file():
        return HardwareProfile.from_json(path)
    raise ValueError(
        f"hardware={str(name_or_path)!r} is neither a known profile {sorted(PROFILES) + sorted(ALIASES)} "
        "nor a profile JSON file"
    )
