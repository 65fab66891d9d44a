"""The server runs whatever policy object it is given from Python, and its clients reach the policy."""

from __future__ import annotations

import openai

from fastswitch.sched.policies import FCFSPolicy
from server_harness import running_server


class RecordingPolicy(FCFSPolicy):
    """fcfs that notes who asked and how many tokens each request got."""

    name = "recording"

    def __init__(self) -> None:
        self.clients: dict[str, str] = {}
        self.tokens: dict[str, int] = {}

    def on_arrival(self, request, live) -> None:
        self.clients[request.request_id] = request.client_id

    def on_output_token(self, request) -> None:
        self.tokens[request.request_id] = len(request.output_token_ids)


def test_a_policy_object_given_to_the_server_schedules_its_requests(tiny_model):
    policy = RecordingPolicy()
    with running_server(tiny_model, num_gpu_blocks=64, policy=policy) as (base_url, app):
        assert app.state.serving.engine.scheduler.policy is policy
        client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60)
        for user in ("alice", "bob"):
            reply = client.completions.create(model="tiny", prompt="Hello", max_tokens=5, user=user,
                                              extra_body={"ignore_eos": True})  # fmt: skip
            assert reply.usage.completion_tokens == 5
    assert sorted(policy.clients.values()) == ["alice", "bob"]
    assert sorted(policy.tokens.values()) == [5, 5]
