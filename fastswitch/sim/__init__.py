"""The simulator: the real engine with a virtual-clock executor and copy engine, for paper-scale runs.

The cost-model layer (hardware profiles, model shapes, the roofline cost model, the virtual clock)
imports nothing heavy. The engine-facing names (`simulate`, `build_simulated_engine`,
`build_real_engine_on_virtual_time`) load the engine, and with it torch and transformers, on first use.
Command line: `python -m fastswitch.sim --list`.
"""

from fastswitch.sim.clock import CopyQueues, VirtualClock
from fastswitch.sim.cost_model import CostModel, StepCost
from fastswitch.sim.experiments import EXPERIMENTS, Experiment, get_experiment
from fastswitch.sim.hardware import PROFILES, HardwareProfile, get_profile
from fastswitch.sim.model_shapes import MODEL_SHAPES, ModelShape, get_model_shape

_ENGINE_FACING = {"simulate", "build_simulated_engine", "build_real_engine_on_virtual_time", "SimulatedEngine"}


def __getattr__(name: str):
    if name in _ENGINE_FACING:
        from fastswitch.sim import simulator

        return getattr(simulator, name)
    raise AttributeError(f"module 'fastswitch.sim' has no attribute {name!r}")


__all__ = [
    "EXPERIMENTS", "MODEL_SHAPES", "PROFILES", "CopyQueues", "CostModel", "Experiment", "HardwareProfile",
    "ModelShape", "StepCost", "VirtualClock", "get_experiment", "get_model_shape", "get_profile",
    *sorted(_ENGINE_FACING),
]  # fmt: skip
