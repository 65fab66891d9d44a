"""One engine builder: LLM, the server's ServingEngine and the simulator get the same pools from one config."""

from __future__ import annotations

import pytest
import torch

from fastswitch import LLM, EngineConfig, SamplingParams, build
from fastswitch.build import (
    DEFAULT_CPU_KV_BYTES,
    DEFAULT_CPU_MAX_MODEL_LEN,
    HOST_BLOCKS_PER_DEVICE_BLOCK,
    PoolSizes,
    build_engine,
    pool_sizes,
)
from fastswitch.executor import ForkingExecutor, ModelExecutor
from fastswitch.model_sources import tiny_random_llama
from fastswitch.models.loader import load_model
from fastswitch.models.runner import KVCacheSpec, kv_cache_spec
from fastswitch.server import ServingEngine
from fastswitch.sim.hardware import get_profile
from fastswitch.sim.model_shapes import ModelShape
from fastswitch.sim.simulator import build_simulated_engine


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_random_llama(seed=0, root=tmp_path_factory.mktemp("models") / "tiny-random")


@pytest.fixture(scope="module")
def loaded(folder):
    return load_model(folder, dtype="float32", progress=False)


def shape_of(engine) -> tuple[int, int, int, int]:
    stats = engine.stats()
    return stats["num_gpu_blocks"], stats["num_cpu_blocks"], stats["block_bytes"], engine.max_seq_len


def test_llm_server_and_simulator_get_the_same_pools_from_one_config(folder, loaded):
    sizes = {"block_size": 8, "num_gpu_blocks": 20, "max_model_len": 128}
    llm = LLM(folder, attention_backend="torch", **sizes)
    serving = ServingEngine.for_loaded(loaded, "tiny", attention_backend="torch", **sizes)
    config = EngineConfig.from_preset("fastswitch", **sizes)
    shape = ModelShape.from_hf_config(loaded.hf_config, name="tiny", dtype_bytes=4)  # the model runs in fp32
    simulated = build_simulated_engine(config, shape, get_profile("a10")).engine
    expected = (20, 20 * HOST_BLOCKS_PER_DEVICE_BLOCK, shape.kv_block_bytes(8), 128)
    assert shape_of(llm.engine) == shape_of(serving.engine) == shape_of(simulated) == expected
    assert llm.max_model_len == serving.max_model_len == 128
    llm.close()
    serving.close()
    simulated.close()


def test_left_to_the_defaults_llm_and_server_size_the_same_cpu_pools(folder, loaded, monkeypatch):
    # Smaller CPU defaults than the real ones, so that both bind on the tiny model (limit 1024 tokens,
    # 8 KiB per block of 16) without allocating hundreds of MiB.
    monkeypatch.setattr(build, "DEFAULT_CPU_MAX_MODEL_LEN", 512)
    monkeypatch.setattr(build, "DEFAULT_CPU_KV_BYTES", 64 * kv_cache_spec(loaded.model).block_bytes(16))
    llm = LLM(folder, attention_backend="torch")
    serving = ServingEngine.for_loaded(loaded, "tiny", attention_backend="torch")
    expected = (64, 64 * HOST_BLOCKS_PER_DEVICE_BLOCK, 8 << 10, 512)
    assert shape_of(llm.engine) == shape_of(serving.engine) == expected
    assert llm.max_model_len == serving.max_model_len == 512
    llm.close()
    serving.close()


def test_a_cpu_pool_is_cut_to_the_cpu_budget_and_a_long_context_to_the_cpu_default():
    spec = KVCacheSpec(num_layers=32, num_kv_heads=8, head_dim=128, dtype=torch.float32)  # 4 MiB per block of 16
    sizes = pool_sizes(EngineConfig(), 131072, spec, torch.device("cpu"))
    assert sizes.max_model_len == DEFAULT_CPU_MAX_MODEL_LEN
    assert sizes.num_gpu_blocks == DEFAULT_CPU_KV_BYTES // spec.block_bytes(16) == 64
    assert sizes.num_cpu_blocks == 64 * HOST_BLOCKS_PER_DEVICE_BLOCK
    assert pool_sizes(EngineConfig(num_cpu_blocks=7, num_gpu_blocks=5, max_model_len=99)) == PoolSizes(5, 7, 99)


def test_sizes_nothing_can_default_and_lengths_beyond_the_model_are_refused_naming_them(loaded):
    with pytest.raises(ValueError, match="num_gpu_blocks=None: without a model"):
        pool_sizes(EngineConfig(max_model_len=64))
    with pytest.raises(ValueError, match="max_model_len=None: without a model"):
        pool_sizes(EngineConfig(num_gpu_blocks=4))
    with pytest.raises(ValueError, match="max_model_len=2048 exceeds the model's limit of 1024 tokens"):
        build_engine(loaded.model, EngineConfig(max_model_len=2048))
    with pytest.raises(ValueError, match="max_model_len=2048 exceeds the model's limit of 1024 tokens"):
        ServingEngine.for_loaded(loaded, "tiny", max_model_len=2048)


def test_only_a_forking_executor_serves_n_samples(loaded):
    config = EngineConfig.from_preset("fastswitch", block_size=8, num_gpu_blocks=16, max_model_len=64,
                                      attention_backend="torch")  # fmt: skip
    real = build_engine(loaded.model, config)
    assert isinstance(real.executor, ModelExecutor) and isinstance(real.executor, ForkingExecutor)
    output = real.add_request([1, 2, 3], SamplingParams(n=2, max_tokens=2, ignore_eos=True))
    real.run_until_done()
    assert len(output.samples) == 2
    shape = ModelShape.from_hf_config(loaded.hf_config, name="tiny", dtype_bytes=4)
    simulated = build_simulated_engine(config, shape, get_profile("a10")).engine
    assert not isinstance(simulated.executor, ForkingExecutor)
    with pytest.raises(ValueError, match="n=2 needs an executor that forks samples"):
        simulated.add_request([1, 2, 3], SamplingParams(n=2, max_tokens=2))
    real.close()
    simulated.close()
