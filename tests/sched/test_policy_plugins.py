"""Policies as plug-ins: any object with the SchedulingPolicy hooks drives the engine, as the protocol
documents (which hook, when, with what), through EngineConfig, LLM and the simulator."""

from __future__ import annotations

import gc

import pytest

from fakes import make_engine
from fastswitch.config import EngineConfig
from fastswitch.models.sampling import SamplingParams
from fastswitch.sched import policies
from fastswitch.sched.policies import HOOKS, make_policy, policy_names, register_policy


class LastComeFirst:
    """The latest arrival first: an order no built-in policy gives. Records every hook call."""

    name = "lcfs"

    def __init__(self, preemptive: bool = False) -> None:
        self.preemptive = preemptive
        self.calls: list[tuple] = []
        self.arrivals: dict[str, int] = {}

    def on_arrival(self, request, live) -> None:
        self.calls.append(("arrival", request.request_id, [r.request_id for r in live]))
        self.arrivals[request.request_id] = len(self.arrivals)

    def on_step(self, live, now) -> None:
        self.calls.append(("step", now, [r.request_id for r in live]))

    def key(self, request) -> tuple:
        return (-self.arrivals[request.request_id],)

    def on_first_admission(self, request) -> None:
        self.calls.append(("admitted", request.request_id))

    def on_output_token(self, request) -> None:
        self.calls.append(("token", request.request_id, len(request.output_token_ids)))


def config(policy, **overrides) -> EngineConfig:
    settings = dict(block_size=4, num_gpu_blocks=64, max_num_seqs=1, max_num_batched_tokens=64, async_swap=False)
    return EngineConfig(policy=policy, **{**settings, **overrides})


def finish_order(outputs) -> list[str]:
    return [o.request_id for o in sorted(outputs, key=lambda o: o.metrics.finish_time)]


def test_a_plugin_object_orders_the_engine_and_sees_each_hook_as_documented():
    policy = LastComeFirst()
    engine, _, _ = make_engine(config(policy))
    assert engine.scheduler.policy is policy  # used as given, so its state can be read
    outputs = [engine.add_request([i + 1] * 5, SamplingParams(max_tokens=3, ignore_eos=True)) for i in range(3)]
    clock_before_first_step = engine.executor.now()
    engine.run_until_done()
    assert finish_order(outputs) == ["2", "1", "0"]  # one sequence at a time, latest arrival first
    arrivals = [c for c in policy.calls if c[0] == "arrival"]
    assert arrivals == [("arrival", "0", []), ("arrival", "1", ["0"]), ("arrival", "2", ["0", "1"])]
    steps = [c for c in policy.calls if c[0] == "step"]
    assert steps[0] == ("step", clock_before_first_step, ["0", "1", "2"])  # every live request, arrival order
    assert [c[1] for c in steps] == sorted(c[1] for c in steps)  # the engine clock
    assert [c[1] for c in policy.calls if c[0] == "admitted"] == ["2", "1", "0"]  # once each, in turn
    tokens = [c for c in policy.calls if c[0] == "token"]
    assert len(tokens) == 9 and tokens[:3] == [("token", "2", 1), ("token", "2", 2), ("token", "2", 3)]
    # Every step begins with on_step, before any admission or token of that step.
    first = policy.calls.index(("admitted", "2"))
    assert policy.calls[first - 1][0] == "step"


@pytest.mark.parametrize("preemptive", [False, True])
def test_preemptive_decides_whether_a_higher_ranked_arrival_evicts_a_running_request(preemptive):
    """Device memory holds one long request; a newcomer, ranked first by the policy, needs blocks too."""
    policy = LastComeFirst(preemptive=preemptive)
    engine, _, _ = make_engine(config(policy, num_gpu_blocks=8, max_num_seqs=4))
    long = engine.add_request([3] * 8, SamplingParams(max_tokens=20, ignore_eos=True))
    for _ in range(12):  # 8 + 12 tokens: 5 of the 8 blocks held
        engine.step()
    assert long.metrics.num_preemptions == 0 and len(long.token_ids) == 12
    short = engine.add_request([4] * 16, SamplingParams(max_tokens=4, ignore_eos=True))  # its prompt needs 4
    engine.run_until_done()
    if preemptive:
        assert long.metrics.num_preemptions >= 1
        assert short.metrics.finish_time < long.metrics.finish_time
    else:  # the running request ranks ahead whatever key says: the newcomer waits for it
        assert long.metrics.num_preemptions == 0
        assert short.metrics.first_token_time > long.metrics.finish_time


def test_a_policy_missing_hooks_is_refused_naming_them():
    class Partial:
        name, preemptive = "partial", True

        def key(self, request):
            return ()

        def on_arrival(self, request, live):
            pass

    missing = r"lacks the method\(s\) \['on_step', 'on_first_admission', 'on_output_token'\]"
    with pytest.raises(ValueError, match=missing):
        EngineConfig(policy=Partial())
    with pytest.raises(ValueError, match=r"lacks the method\(s\) \['on_step'"):
        EngineConfig(policy=Partial)  # a class is checked before any engine makes one
    with pytest.raises(ValueError, match="lacks the method"):  # a factory's product, when an engine is built
        make_engine(config(lambda: Partial()))
    bad_flag = LastComeFirst()
    bad_flag.preemptive = "yes"
    with pytest.raises(ValueError, match="`preemptive` must be a bool, got 'yes'"):
        EngineConfig(policy=bad_flag)
    with pytest.raises(ValueError, match="policy='lottery' is not one of .*'mlfq'"):
        EngineConfig(policy="lottery")


def test_registered_names_work_wherever_names_do(monkeypatch):
    monkeypatch.setattr(policies, "_REGISTRY", dict(policies._REGISTRY))  # leave the real registry as it was
    assert policy_names()[:4] == ("fcfs", "priority", "vtc", "mlfq")
    register_policy("lcfs", LastComeFirst)
    engine, _, _ = make_engine(config("lcfs"))
    outputs = [engine.add_request([i + 1] * 5, SamplingParams(max_tokens=2, ignore_eos=True)) for i in range(3)]
    engine.run_until_done()
    assert isinstance(engine.scheduler.policy, LastComeFirst) and finish_order(outputs) == ["2", "1", "0"]
    with pytest.raises(ValueError, match="'lcfs' is already registered"):
        register_policy("lcfs", LastComeFirst)
    register_policy("lcfs", lambda: LastComeFirst(preemptive=True), replace=True)
    assert make_policy("lcfs").preemptive
    with pytest.raises(ValueError, match="lacks the method"):
        register_policy("broken", object)


def test_one_policy_object_drives_one_engine_and_a_class_gives_each_its_own():
    policy = LastComeFirst()
    first, _, _ = make_engine(config(policy))
    with pytest.raises(ValueError, match="already drives another engine.*class or a factory"):
        make_engine(config(policy))
    del first
    gc.collect()
    second, _, _ = make_engine(config(policy))  # free again once its engine is gone
    assert second.scheduler.policy is policy
    a, _, _ = make_engine(config(LastComeFirst))
    b, _, _ = make_engine(config(LastComeFirst))
    assert a.scheduler.policy is not b.scheduler.policy


def test_builtin_policies_follow_the_protocol():
    for name in policy_names():
        policy = make_policy(name)
        assert all(callable(getattr(policy, hook)) for hook in HOOKS)
        assert isinstance(policy.name, str) and isinstance(policy.preemptive, bool)
    assert make_policy("vtc", vtc_input_weight=3.0).input_weight == 3.0


def test_llm_takes_a_policy_object():
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig, LlamaForCausalLM

    from fastswitch.llm import LLM

    torch.manual_seed(0)
    hf_config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)  # fmt: skip
    hf = LlamaForCausalLM(hf_config)
    policy = LastComeFirst()
    llm = LLM(hf.eval(), block_size=8, max_num_seqs=1, attention_backend="torch", policy=policy)
    outputs = llm.generate([[5, 6, 7], [8, 9], [10]], SamplingParams(max_tokens=2, ignore_eos=True))
    assert llm.engine.scheduler.policy is policy
    assert [c[1] for c in policy.calls if c[0] == "admitted"] == [o.request_id for o in reversed(outputs)]
    llm.close()


def test_simulator_and_experiments_take_plugins():
    from fastswitch.sim import get_experiment
    from fastswitch.sim.runner import jobs_of, run_job

    experiment = get_experiment("smoke").replace(num_conversations=4, presets=("fastswitch",))
    with_class = experiment.replace(engine={**experiment.engine, "policy": LastComeFirst})
    (result,) = [run_job(job, progress=False) for job in jobs_of(with_class)]
    assert result["policy"] == "lcfs" and result["num_generated_tokens"] > 0
    with_object = experiment.replace(engine={**experiment.engine, "policy": LastComeFirst()})
    with pytest.raises(ValueError, match="an experiment builds one engine per"):
        with_object.engine_config("fastswitch", 0)
