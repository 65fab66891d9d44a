"""FastSwitch: fairness-aware LLM serving with cheap context switches (after arXiv 2411.18424)."""

from fastswitch.config import EngineConfig
from fastswitch.llm import LLM
from fastswitch.models.sampling import SamplingParams
from fastswitch.outputs import RequestMetrics, RequestOutput

__all__ = ["LLM", "EngineConfig", "RequestMetrics", "RequestOutput", "SamplingParams"]
