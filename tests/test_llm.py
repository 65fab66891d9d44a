"""The LLM facade: request validation, stop conditions, seeds, metrics, batching limits, stats."""

import time

import pytest
import torch
from transformers import LlamaForCausalLM

from fastswitch.llm import LLM
from fastswitch.model_sources import tiny_random_llama
from fastswitch.models import SamplingParams
from tiny_llamas import tiny_llama

EOS = 2


def tiny_model() -> LlamaForCausalLM:
    return tiny_llama(vocab_size=256, max_position_embeddings=128, eos_token_id=EOS, rms_norm_eps=1e-6)


@pytest.fixture(scope="module")
def hf_model() -> LlamaForCausalLM:
    return tiny_model()


@pytest.fixture
def llm(hf_model) -> LLM:
    return LLM(hf_model, block_size=8, max_num_seqs=4, attention_backend="torch")


PROMPTS = [[5, 9, 30, 41], [7] * 13, [100, 3]]


def test_outputs_keep_prompt_order_and_carry_metrics(llm):
    outputs = llm.generate(PROMPTS, SamplingParams(max_tokens=5, ignore_eos=True))
    assert [o.prompt_token_ids for o in outputs] == PROMPTS
    assert [o.request_id for o in outputs] == ["0", "1", "2"]
    for output in outputs:
        assert output.finish_reason == "length" and len(output.token_ids) == 5
        assert output.text is None  # no tokenizer for an in-memory model
        m = output.metrics
        assert m.ttft > 0 and m.first_token_time == m.token_times[0]
        assert len(m.tbts) == 4 and all(gap >= 0 for gap in m.tbts)
        assert m.num_preemptions == 0 and m.e2e_latency >= m.ttft


def test_sequential_and_batched_runs_agree(hf_model, llm):
    one_at_a_time = LLM(hf_model, block_size=8, max_num_seqs=1, max_num_batched_tokens=3, attention_backend="torch")
    params = SamplingParams(max_tokens=6, ignore_eos=True)
    assert [o.token_ids for o in one_at_a_time.generate(PROMPTS, params)] == [
        o.token_ids for o in llm.generate(PROMPTS, params)
    ]


def test_stop_token_ends_the_request_and_is_kept_in_token_ids(llm):
    free_run = llm.generate([PROMPTS[0]], SamplingParams(max_tokens=8, ignore_eos=True))[0].token_ids
    stop = free_run[3]
    first = free_run.index(stop)
    out = llm.generate([PROMPTS[0]], SamplingParams(max_tokens=8, ignore_eos=True, stop_token_ids=[stop]))[0]
    assert out.finish_reason == "stop"
    assert out.token_ids == free_run[: first + 1]


def test_eos_stops_unless_ignored(llm):
    free_run = llm.generate([PROMPTS[0]], SamplingParams(max_tokens=5, ignore_eos=True))[0].token_ids
    # Declare the second greedy token the model's EOS: generation must stop right there.
    model = tiny_model()
    model.generation_config.eos_token_id = free_run[1]
    eos_llm = LLM(model, block_size=8, attention_backend="torch")
    assert eos_llm.eos_token_ids == [free_run[1]]
    stopped = eos_llm.generate([PROMPTS[0]], SamplingParams(max_tokens=5))[0]
    assert stopped.token_ids == free_run[: free_run.index(free_run[1]) + 1] and stopped.finish_reason == "stop"
    ignored = eos_llm.generate([PROMPTS[0]], SamplingParams(max_tokens=5, ignore_eos=True))[0]
    assert ignored.token_ids == free_run and ignored.finish_reason == "length"


def test_seeded_sampling_does_not_depend_on_the_batch(llm):
    params = SamplingParams(max_tokens=6, temperature=1.0, top_p=0.9, seed=123)
    alone = llm.generate([PROMPTS[1]], params)[0].token_ids
    others = SamplingParams(max_tokens=6, temperature=1.0)
    batched = llm.generate([PROMPTS[0], PROMPTS[1], PROMPTS[2]], [others, params, others])[1].token_ids
    assert alone == batched


def test_invalid_requests_raise_before_anything_runs(llm):
    before = llm.stats()
    cases = [
        (lambda: llm.generate([[1, 2], []]), "empty"),
        (lambda: llm.generate([[1, 256]]), "outside the vocabulary 0..255"),
        (lambda: llm.generate(["text"]), "needs a tokenizer"),
        (lambda: llm.generate([[1] * 120], SamplingParams(max_tokens=16)), "136 exceeds max_model_len=128"),
        (lambda: llm.generate(PROMPTS, [SamplingParams()] * 2), "sampling_params has 2 entries but there are 3"),
        (lambda: llm.generate(PROMPTS, priorities=[0, 1]), "priorities has 2 entries"),
        (lambda: llm.generate(PROMPTS, priorities=[0, -1, 0]), "priority=-1"),
        (lambda: llm.generate([[1, 2]], SamplingParams(stop_token_ids=[999])), "stop token id 999"),
        (lambda: llm.chat([{"role": "user", "content": "hi"}]), "chat needs a tokenizer"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    assert llm.stats() == before
    assert llm.generate([[1, 2]], SamplingParams(max_tokens=1))[0].request_id == "0"  # no id was used up


def test_config_errors(hf_model):
    with pytest.raises(ValueError, match="max_model_len=4096 exceeds the model's limit of 128"):
        LLM(hf_model, max_model_len=4096)
    with pytest.raises(ValueError, match="unknown EngineConfig field"):
        LLM(hf_model, block_sise=8)
    small = LLM(hf_model, block_size=8, num_gpu_blocks=2, attention_backend="torch")
    assert small.max_model_len == 16  # max_model_len (128) cut to what 2 blocks of 8 tokens hold
    with pytest.raises(ValueError, match="prompt of 10 tokens \\+ max_tokens=8 = 18 exceeds max_seq_len=16"):
        small.generate([[1] * 10], SamplingParams(max_tokens=8))


def test_adaptive_swap_knobs_reach_the_scheduler(hf_model):
    llm = LLM(hf_model, block_size=8, attention_backend="torch", sync_swap_fraction=0.1, adaptive_sync_blocks=0)
    assert llm.config.sync_swap_fraction == 0.1
    rule = llm.engine.scheduler.swap_rule
    assert (rule.sync_swap_fraction, rule.adaptive_sync_blocks) == (0.1, 0)
    with pytest.raises(ValueError, match="sync_swap_fraction=-1 must be a number >= 0"):
        LLM(hf_model, sync_swap_fraction=-1)


def test_requests_wait_for_blocks_and_all_finish(hf_model, llm):
    # 3 blocks fit one request of 20 tokens at a time: the others wait for its blocks.
    tight = LLM(hf_model, block_size=8, num_gpu_blocks=3, attention_backend="torch")
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    prompts = [[11] * 12, [12] * 12, [13] * 12]
    expected = [o.token_ids for o in llm.generate(prompts, params)]
    assert [o.token_ids for o in tight.generate(prompts, params)] == expected
    stats = tight.stats()
    assert stats["num_free_gpu_blocks"] == 3 and stats["num_generated_tokens"] == 24
    assert stats["num_prompt_tokens"] == 36 and stats["swap_out_count"] == 0


def test_priorities_order_admission(hf_model):
    one_slot = LLM(hf_model, block_size=8, max_num_seqs=1, attention_backend="torch")
    outputs = one_slot.generate(PROMPTS, SamplingParams(max_tokens=2, ignore_eos=True), priorities=[2, 0, 1])
    first_tokens = sorted(range(3), key=lambda i: outputs[i].metrics.first_token_time)
    assert first_tokens == [1, 2, 0]


def test_add_request_takes_an_arrival_time(llm):
    arrived = time.monotonic() - 5.0
    output = llm.add_request([5, 9, 30], SamplingParams(max_tokens=2, ignore_eos=True), arrival_time=arrived)
    with pytest.raises(ValueError, match="arrival_time=.* at most now="):
        llm.add_request([5, 9], arrival_time=time.monotonic() + 60.0)
    while llm.has_unfinished():
        llm.step()
    assert output.metrics.arrival_time == arrived and output.metrics.ttft >= 5.0
    assert llm.add_request([5]).request_id == "1"  # the rejected request used no id


def poisoned(params: SamplingParams, **fields) -> SamplingParams:
    """Params that passed validation and were then corrupted, so the engine itself meets the bad value."""
    for name, value in fields.items():
        object.__setattr__(params, name, value)
    return params


def test_a_request_that_fails_in_a_step_fails_alone_and_poisons_nothing(llm):
    quiet = llm.generate(PROMPTS, SamplingParams(max_tokens=6, ignore_eos=True))
    bad = poisoned(SamplingParams(max_tokens=6, temperature=1.0, seed=1), seed=2**64)  # torch cannot take it
    params = [SamplingParams(max_tokens=6, ignore_eos=True), bad, SamplingParams(max_tokens=6, ignore_eos=True)]
    with pytest.raises(RuntimeError, match="request 4 failed: .*"):
        llm.generate(PROMPTS, params)
    assert not llm.has_unfinished()
    stats = llm.stats()
    assert stats["num_free_gpu_blocks"] == stats["num_gpu_blocks"]
    # The same engine answers the next call exactly as before, and the healthy requests of the failed
    # call were served alongside (their tokens are what a quiet engine gives).
    again = llm.generate(PROMPTS, SamplingParams(max_tokens=6, ignore_eos=True))
    assert [o.token_ids for o in again] == [o.token_ids for o in quiet]


def test_the_step_by_step_api_reports_the_failed_request_and_steps_on(llm):
    good = llm.add_request(PROMPTS[0], SamplingParams(max_tokens=4, ignore_eos=True))
    bad = llm.add_request(PROMPTS[1], poisoned(SamplingParams(max_tokens=4, temperature=1.0, seed=1), seed=2**64))
    while llm.has_unfinished():
        llm.step()
    assert (good.finish_reason, len(good.token_ids)) == ("length", 4)
    assert bad.finish_reason == "error" and bad.error and bad.token_ids == []
    assert llm.stats()["num_free_gpu_blocks"] == llm.stats()["num_gpu_blocks"]


def test_a_step_that_raises_leaves_no_request_of_the_call_behind(llm, monkeypatch):
    real_step = llm.engine.step
    calls = iter([RuntimeError("device lost")])

    def step_that_fails_once():
        for failure in calls:
            raise failure
        return real_step()

    monkeypatch.setattr(llm.engine, "step", step_that_fails_once)
    with pytest.raises(RuntimeError, match="device lost"):
        llm.generate(PROMPTS, SamplingParams(max_tokens=3, ignore_eos=True))
    assert not llm.has_unfinished()
    assert [len(o.token_ids) for o in llm.generate(PROMPTS, SamplingParams(max_tokens=3, ignore_eos=True))] == [3] * 3


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda llm: llm.generate(None), "prompts must be a string, a list of strings or a list of token-id lists, "
                                         "got NoneType"),
        (lambda llm: llm.generate(123), "got int"),
        (lambda llm: llm.generate(torch.tensor([1, 2, 3])), r"got Tensor \(pass tensor.tolist\(\)\)"),
        (lambda llm: llm.generate([None]), "a prompt must be a string or a list of token ids, got NoneType"),
        (lambda llm: llm.generate([[1, 2]], SamplingParams(stop_token_ids=5)), "stop_token_ids=5"),
    ],
)
def test_bad_python_inputs_get_value_errors_naming_them(llm, call, message):
    with pytest.raises(ValueError, match=message):
        call(llm)
    assert not llm.has_unfinished()


def test_bad_engine_arguments_fail_before_the_weights_load(monkeypatch):
    import fastswitch.build as build_module

    def no_loading(*args, **kwargs):
        raise AssertionError("the weights were loaded before the arguments were checked")

    monkeypatch.setattr(build_module, "load_model", no_loading)
    with pytest.raises(ValueError, match="num_gpu_blocks=True must be a positive integer"):
        LLM("unused", num_gpu_blocks=True)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cuda' but this machine has no CUDA device"):
            LLM("unused", device="cuda")


@pytest.fixture(scope="module")
def chat_llm(tmp_path_factory) -> LLM:
    folder = tiny_random_llama(seed=0, root=tmp_path_factory.mktemp("models") / "tiny-random")
    return LLM(folder, block_size=8, num_gpu_blocks=32, max_model_len=256, attention_backend="torch")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda llm: llm.chat([{"content": "hi"}]),
         "message 0 must be a dict with a string 'role' and a string 'content'"),
        (lambda llm: llm.chat([{"role": "user", "content": None}]), "message 0 must be a dict"),
        (lambda llm: llm.chat("hi"), "conversations must be a list of messages or a list of such lists, got str"),
        (lambda llm: llm.chat([[]]), "a conversation must be a non-empty list of messages"),
        (lambda llm: llm.conversation().send(None), "a chat message must be a string, got NoneType"),
    ],
)
def test_bad_chat_inputs_get_value_errors_naming_them(chat_llm, call, message):
    with pytest.raises(ValueError, match=message):
        call(chat_llm)
    assert not chat_llm.has_unfinished()
