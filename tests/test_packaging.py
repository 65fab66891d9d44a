"""pyproject.toml: what installing fastswitch asks of a machine."""

from __future__ import annotations

from pathlib import Path

import tomllib
from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def requirements(group: str | None = None) -> dict[str, Requirement]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    entries = project["dependencies"] if group is None else project["optional-dependencies"][group]
    return {req.name: req for req in map(Requirement, entries)}


def test_the_triton_floor_keeps_the_triton_a_cuda_torch_pins():
    # torch 2.11's CUDA build pins triton 3.6, which the kernels are compiled and tested against:
    # a higher floor makes pip replace it (or fail offline) on a GPU machine.
    triton = requirements()["triton"]
    assert triton.specifier.contains("3.6.0") and not triton.specifier.contains("3.5.0")


def test_the_test_extra_holds_the_hostile_input_suite_and_the_interpreter_triton():
    test = requirements("test")
    assert "schemathesis" in test
    assert test["triton"].specifier.contains("3.7.0") and not test["triton"].specifier.contains("3.6.0")
