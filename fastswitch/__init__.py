"""FastSwitch: fairness-aware LLM serving with cheap context switches."""

from fastswitch.config import EngineConfig

__all__ = ["EngineConfig"]
