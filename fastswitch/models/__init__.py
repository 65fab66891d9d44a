"""Llama-family models over the paged KV cache: loading, the serving forward, the runner, sampling."""

from fastswitch.models.llama import SUPPORTED_MODEL_TYPES, LlamaForServing
from fastswitch.models.loader import LoadedModel, load_model
from fastswitch.models.logprobs import Logprob
from fastswitch.models.runner import Chunk, KVCacheSpec, ModelRunner, default_num_blocks, kv_cache_spec
from fastswitch.models.sampling import Sampler, SamplingParams

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "Chunk",
    "KVCacheSpec",
    "LlamaForServing",
    "LoadedModel",
    "Logprob",
    "ModelRunner",
    "Sampler",
    "SamplingParams",
    "default_num_blocks",
    "kv_cache_spec",
    "load_model",
]
