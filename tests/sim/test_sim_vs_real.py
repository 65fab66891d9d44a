"""benchmarks/sim_vs_real.py --quick: the simulator, on a profile of this CPU calibrated in the same
run, against the real engine on one multi-turn workload with preemptions, per preset.

The bounds are far looser than the benchmark's goal (10% at P50, 20% at P90): the real run's step
times follow the load of this shared 2-core machine, which changes between the calibration and the
runs, and the quick workload has ~30 turns, whose TTFT P50 is tens of milliseconds when the machine
is quiet (one turn that queues moves it). Errors seen in runs of this test: 0.02-0.33 on a loaded
machine, up to 0.60 (fastswitch TTFT P50, 36 ms real vs 15 ms simulated) on a quieter one. A model
off by more than 5x still fails them: before step times were fitted on this machine (linear forward
line, host time, jitter) the simulated figures were 7-30x too small (errors 0.86-0.97). The run also
reports, per real step, the profile's forward time against the measured one, and the timing sessions
around the real runs."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "sim_vs_real.py"
P50_BOUND, P90_BOUND = 0.8, 0.8


@pytest.fixture(scope="module")
def sim_vs_real():
    spec = importlib.util.spec_from_file_location("sim_vs_real", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules["sim_vs_real"] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules["sim_vs_real"]


def quick_run(sim_vs_real, tmp_path) -> dict:
    out = tmp_path / "errors.json"
    assert sim_vs_real.main(["--quick", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result) == {"vllm", "fastswitch"}
    # Whether a given half preempts depends on how turns interleave, which follows the calibrated (load
    # dependent) step times; over both presets and halves the workload must preempt.
    assert sum(row["preemptions_real"] + row["preemptions_sim"] for row in result.values()) > 0, result
    for row in result.values():
        assert row["real_steps"] > 0 and 0 <= row["step_forward_p50_rel_error"] <= row["step_forward_p90_rel_error"]
        assert [s["session"] for s in row["sessions"]] in (["before", "between"], ["between", "after"]), row
        for metric in ("ttft", "tbt"):
            for q in (50, 90):
                assert math.isfinite(row[f"{metric}_p{q}_rel_error"]) and row[f"{metric}_p{q}_sim_s"] > 0, row
    return result


def test_quick_run_writes_the_errors_of_both_presets(sim_vs_real, tmp_path):
    """The default run checks the benchmark end to end, not its accuracy: the real half's latencies follow
    the load of the machine (a test must not depend on it being quiet), so the bounds are checked below."""
    quick_run(sim_vs_real, tmp_path)


@pytest.mark.slow
def test_quick_run_stays_within_bounds_on_a_quiet_machine(sim_vs_real, tmp_path):
    for preset, row in quick_run(sim_vs_real, tmp_path).items():
        assert row["preemptions_real"] > 0 and row["preemptions_sim"] > 0, f"{preset}: the workload must preempt"
        for metric in ("ttft", "tbt"):
            assert row[f"{metric}_p50_rel_error"] <= P50_BOUND, (preset, metric, row)
            assert row[f"{metric}_p90_rel_error"] <= P90_BOUND, (preset, metric, row)


def test_calibration_fits_recover_known_lines():
    from fastswitch.sim.cost_model import step_features
    from fastswitch.sim.host_calibration import StepTiming, fit_host_time, fit_linear_steps, jitter_factors

    line = (500.0, 20.0, 100.0, 3.0, 800.0)
    batches = [((1, 10),), ((1, 100),) * 4, ((50, 0),), ((200, 0),), ((8, 300), (1, 40)), ((1, 500),) * 8, ((1, 900),)]
    timings = [StepTiming(b, sum(x * c for x, c in zip(step_features(b), line)) * 1e-6, (40.0 + 7.0 * len(b)) * 1e-6)
               for b in batches]  # fmt: skip
    assert fit_linear_steps(timings) == pytest.approx(line, rel=1e-6)
    assert fit_host_time(timings) == pytest.approx((40.0, 7.0), rel=1e-6)
    assert jitter_factors(timings, line, (40.0, 7.0)) == pytest.approx((1.0,) * 33)
    with pytest.raises(ValueError, match="cannot fit 5"):
        fit_linear_steps(timings[:4])
