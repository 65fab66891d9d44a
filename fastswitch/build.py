"""Building an engine: the one place that sizes the KV pools and assembles the real engine.

`pool_sizes` turns an EngineConfig into the device and host pool sizes and the max_model_len an
engine gets; `LLM`, the server's `ServingEngine`, the simulator (fastswitch/sim/simulator.py) and the
calibration and benchmark scripts all size their engines with it, so one config gives one engine
shape everywhere. `load_for_engine` loads a model where the config puts it (split over
tensor-parallel workers when asked), and `build_engine` assembles the real engine over it: device
and host KV caches, ModelRunner + Sampler (`ModelExecutor`), the copy engine, the workers' share
when there are any, and detokenizing by the tokenizer. The simulator builds its own executor and
copy engine on a virtual clock over the same sizes (and `kv_caches` when it runs the real model).

Defaults, for fields left None:

- `max_model_len`: the model's limit (max_supported_len). On a CPU it is cut to
  DEFAULT_CPU_MAX_MODEL_LEN: the full context of a modern model (8k-128k tokens) would size a pool
  nobody on a CPU uses.
- `num_gpu_blocks`: max_num_seqs sequences of max_model_len tokens, cut to what the device affords
  (models/runner.py default_num_blocks). On a CPU it is also cut to DEFAULT_CPU_KV_BYTES: the device
  pool and the host pool share the machine's RAM, and zero-filling them is paid at start-up.
- `num_cpu_blocks`: HOST_BLOCKS_PER_DEVICE_BLOCK times the device pool.

The CPU cuts are the ones the server always had; `LLM` had none, so on a CPU it sized SmolLM2-135M's
pools at the 1 GiB device budget plus a 4 GiB host pool, all zero-filled before the first request.
One set of defaults now serves both, so the same config gives the same engine from either.

A model-free engine (the simulator) has no limit and no device to size from: it needs
num_gpu_blocks and max_model_len given.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fastswitch.cache.copy_engine import CopyEngine, TorchCopyEngine
from fastswitch.cache.kv_cache import KVCache
from fastswitch.config import EngineConfig
from fastswitch.engine import Engine
from fastswitch.executor import Executor, ModelExecutor
from fastswitch.models.llama import max_supported_len
from fastswitch.models.loader import LoadedModel, load_model, resolve_device
from fastswitch.models.runner import KVCacheSpec, ModelRunner, default_num_blocks, kv_cache_spec
from fastswitch.models.sampling import Sampler
from fastswitch.parallel.partition import WHOLE_MODEL
from fastswitch.parallel.workers import WorkerGroup

if TYPE_CHECKING:
    from fastswitch.models.llama import LlamaForServing

DEFAULT_CPU_MAX_MODEL_LEN = 2048  # chat turns on a CPU are short
DEFAULT_CPU_KV_BYTES = 256 << 20  # device KV on a CPU: ~5.8k tokens of SmolLM2-135M in fp32, quick to allocate
HOST_BLOCKS_PER_DEVICE_BLOCK = 4  # num_cpu_blocks=None gives the host 4x the device pool
GPU_PACK_MIN_RUNS = 3  # a pack kernel launch (~5 us) beats three or more copy calls of 2-7 us each


@dataclass(frozen=True)
class PoolSizes:
    num_gpu_blocks: int
    num_cpu_blocks: int
    max_model_len: int  # as configured (or defaulted); the engine serves at most the device pool of it


def pool_sizes(
    config: EngineConfig,
    model_limit: int | None = None,
    spec: KVCacheSpec | None = None,
    device: torch.device | None = None,
) -> PoolSizes:
    """The pool sizes and max_model_len of an engine for config (module docstring: the defaults).

    model_limit: the longest sequence the model computes exactly (None: no model, as in the
    simulator); spec and device: the model's KV layout and where its pool lives, which size a pool
    left None. ValueError for a max_model_len beyond model_limit or a size nothing can default."""
    on_cpu = device is not None and device.type == "cpu"
    max_model_len = config.max_model_len
    if max_model_len is not None and model_limit is not None and max_model_len > model_limit:
        raise ValueError(f"max_model_len={max_model_len} exceeds the model's limit of {model_limit} tokens")
    if max_model_len is None:
        if model_limit is None:
            raise ValueError("max_model_len=None: without a model to take the limit from, give it explicitly")
        max_model_len = min(model_limit, DEFAULT_CPU_MAX_MODEL_LEN) if on_cpu else model_limit
    num_gpu_blocks = config.num_gpu_blocks
    if num_gpu_blocks is None:
        if spec is None or device is None:
            raise ValueError("num_gpu_blocks=None: without a model to size the device pool from, give it explicitly")
        num_gpu_blocks = default_num_blocks(spec, config.block_size, config.max_num_seqs, max_model_len, device)
        if on_cpu:
            num_gpu_blocks = max(1, min(num_gpu_blocks, DEFAULT_CPU_KV_BYTES // spec.block_bytes(config.block_size)))
    num_cpu_blocks = config.num_cpu_blocks or HOST_BLOCKS_PER_DEVICE_BLOCK * num_gpu_blocks
    return PoolSizes(num_gpu_blocks, num_cpu_blocks, max_model_len)


def model_pool_sizes(model: LlamaForServing, config: EngineConfig) -> PoolSizes:
    """pool_sizes for a loaded model (its limit, KV layout and device)."""
    return pool_sizes(config, max_supported_len(model.config), kv_cache_spec(model), model.device)


def kv_caches(model: LlamaForServing, config: EngineConfig, sizes: PoolSizes) -> tuple[KVCache, KVCache]:
    """The device KV cache for model and its host pool (pinned where the device is a GPU)."""
    device_cache = KVCache(
        sizes.num_gpu_blocks, model.num_layers, config.block_size, model.num_kv_heads, model.head_dim,
        model.dtype, model.device,
    )  # fmt: skip
    return device_cache, KVCache.host_pool_for(device_cache, sizes.num_cpu_blocks)


def load_for_engine(
    source: str | Path | Any, config: EngineConfig, tensor_parallel_size: int = 1, tokenizer=None, progress: bool = True
) -> tuple[LoadedModel, WorkerGroup | None]:
    """The model for an engine of config: source (a checkpoint folder, a .gguf file, or a transformers
    model in memory) loaded in config's dtype on config's device; with tensor_parallel_size > 1, rank
    0's shard and the WorkerGroup holding the others. tokenizer: replaces the checkpoint's."""
    device = resolve_device(config.device)
    workers = WorkerGroup.start(source, tensor_parallel_size, config.dtype, device)
    partition = WHOLE_MODEL if workers is None else workers.partition
    loaded = load_model(source, dtype=config.dtype, device=device, tokenizer=tokenizer, progress=progress,
                        partition=partition)  # fmt: skip
    return loaded, workers


def build_engine(
    model: LlamaForServing,
    config: EngineConfig,
    *,
    tokenizer=None,
    eos_token_ids: list[int] | tuple[int, ...] = (),
    workers: WorkerGroup | None = None,
    metrics_window: int | None = None,
) -> Engine:
    """The real engine over a LlamaForServing on the wall clock, its pools sized by model_pool_sizes.

    tokenizer: decodes outputs to text (skipping special tokens); None leaves outputs as token ids.
    workers: a fastswitch.parallel.WorkerGroup when model is rank 0's shard of a tensor-parallel
    model; the other ranks then build the same pools, and every step and copy reaches them. The
    engine keeps its caches as `device_cache` and `host_cache`. metrics_window: see Engine."""
    detokenize = None
    if tokenizer is not None:
        detokenize = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    sizes = model_pool_sizes(model, config)
    device_cache, host_cache = kv_caches(model, config, sizes)
    runner = ModelRunner(model, device_cache, backend=config.attention_backend)
    rank0 = ModelExecutor(runner, Sampler(), config.seed)
    local = TorchCopyEngine(device_cache, host_cache, asynchronous=config.async_swap)
    executor: Executor = rank0
    copies: CopyEngine = local
    if workers is not None:
        workers.build(sizes.num_gpu_blocks, sizes.num_cpu_blocks, config.block_size, config.async_swap,
                      config.attention_backend)  # fmt: skip
        executor, copies = workers.executor(rank0), workers.copy_engine(local)
    # On a GPU a few link calls cost more than one gather at HBM speed (2-7 us per call, docs/references.md).
    pack_min_runs = GPU_PACK_MIN_RUNS if device_cache.data.is_cuda and config.block_groups else None
    engine = Engine(
        config, executor, copies, num_gpu_blocks=sizes.num_gpu_blocks, num_cpu_blocks=sizes.num_cpu_blocks,
        num_layers=model.num_layers, block_bytes=device_cache.block_bytes, max_model_len=sizes.max_model_len,
        eos_token_ids=eos_token_ids, vocab_size=model.vocab_size, detokenize=detokenize, pack_min_runs=pack_min_runs,
        metrics_window=metrics_window,
    )  # fmt: skip
    engine.device_cache, engine.host_cache = device_cache, host_cache
    return engine
