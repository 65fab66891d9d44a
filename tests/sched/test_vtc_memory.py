"""VTC's per-client state stays bounded, and forgetting idle clients never changes a counter or a rank."""

from __future__ import annotations

import math

from hypothesis import example, given, settings
from hypothesis import strategies as st

from fastswitch.models.sampling import SamplingParams
from fastswitch.sched import policies
from fastswitch.sched.policies import VTCPolicy
from fastswitch.sched.request import Request

# One operation: (kind, client or request pick, size). Kinds: a request arrives for a client, the
# oldest-but-pick live request is admitted, gets a token, or finishes.
operations = st.lists(
    st.tuples(st.sampled_from(["arrive", "admit", "token", "finish"]), st.integers(0, 11), st.integers(1, 40)),
    max_size=120,
)


# B arrives (lifted to A's counter), A is served more and leaves while B stays; C's arrival looks for
# idle counters; A returns: its counter is above the floor and must have been kept.
@example([("arrive", 0, 30), ("admit", 0, 1), ("arrive", 1, 2), ("token", 0, 1), ("token", 0, 1),
          ("finish", 0, 1), ("arrive", 2, 1), ("arrive", 0, 1)])  # fmt: skip
@settings(max_examples=200)
@given(operations)
def test_forgetting_idle_clients_changes_no_counter_and_no_rank(ops):
    """Every arrival drops what it may; the keys of live requests match a VTC that keeps everything."""
    forgetful = VTCPolicy()
    keeper = VTCPolicy()
    keeper._forget_at = math.inf  # never drops anything: plain VTC
    live: list[Request] = []
    admitted: set[str] = set()
    for step, (kind, pick, size) in enumerate(ops):
        if kind == "arrive":
            request = Request(str(step), [1] * size, SamplingParams(), float(step), client_id=f"client-{pick}")
            forgetful._forget_at = 0  # look for idle counters to drop at every arrival
            for policy in (forgetful, keeper):
                policy.on_arrival(request, list(live))
            live.append(request)
            # A returning client starts from the same counter whether or not it was forgotten.
            assert forgetful.counters[request.client_id] == keeper.counters[request.client_id]
        elif live:
            request = live[pick % len(live)]
            if kind == "admit" and request.request_id not in admitted:
                admitted.add(request.request_id)
                for policy in (forgetful, keeper):
                    policy.on_first_admission(request)
            elif kind == "token":
                for policy in (forgetful, keeper):
                    policy.on_output_token(request)
            elif kind == "finish":
                live.remove(request)
        assert [forgetful.key(r) for r in live] == [keeper.key(r) for r in live]
        for client in {r.client_id for r in live}:
            assert forgetful.counters[client] == keeper.counters[client]
    assert len(forgetful.counters) <= len(keeper.counters)


def test_a_stream_of_one_off_clients_keeps_a_bounded_table():
    policy = VTCPolicy()
    steady = Request("steady", [1] * 4, SamplingParams(), 0.0, client_id="steady")
    policy.on_arrival(steady, [])
    policy.on_first_admission(steady)
    largest = 0
    for i in range(8 * policies.VTC_FORGET_MIN_CLIENTS):
        # Each one-off client is served a little, then leaves; the steady client keeps being served.
        request = Request(str(i), [1] * 3, SamplingParams(), float(i), client_id=f"one-off-{i}")
        policy.on_arrival(request, [steady])
        policy.on_first_admission(request)
        for _ in range(4):
            policy.on_output_token(steady)
        largest = max(largest, len(policy.counters))
    assert largest <= 2 * policies.VTC_FORGET_MIN_CLIENTS + 2
    assert policy.counters["steady"] >= policy.floor


def test_an_arrival_with_nobody_active_is_lifted_to_the_floor():
    policy = VTCPolicy(input_weight=1.0, output_weight=1.0)
    a = Request("a", [1] * 10, SamplingParams(), 0.0, client_id="A")
    policy.on_arrival(a, [])
    policy.on_first_admission(a)  # A: 10
    b = Request("b", [1] * 2, SamplingParams(), 1.0, client_id="B")
    policy.on_arrival(b, [a])  # B lifted to 10: the floor is 10
    assert policy.floor == 10.0
    # Both leave; a new client C arrives when nobody is active: it banks no credit below the floor.
    c = Request("c", [1], SamplingParams(), 2.0, client_id="C")
    policy.on_arrival(c, [])
    assert policy.counters["C"] == 10.0
