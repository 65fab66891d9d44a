import time

import pytest

from fastswitch.sim.workload_driver import WorkloadDriver, sleep_until
from fastswitch.workloads import Conversation, Turn, Workload


def two_conversations() -> Workload:
    a = Conversation(0, client_id=3, start_time=1.0, turns=(Turn(4, 2, 0.0, priority=2, prompt_token_ids=(5, 6, 7, 8)),
                                                         Turn(2, 1, 0.5, priority=0)))  # fmt: skip
    b = Conversation(1, client_id=4, start_time=2.0, turns=(Turn(3, 1, 0.0),))
    return Workload("two", (a, b))


def test_turns_arrive_in_order_and_next_turns_follow_answers():
    driver = WorkloadDriver(two_conversations())
    assert driver.pop_due(0.5) == [] and driver.next_arrival_time() == 1.0
    (first,) = driver.pop_due(1.0)
    assert first.prompt_token_ids == [5, 6, 7, 8] and first.keep_kv and first.priority == 2
    assert first.client_id == 3 and first.seq_id == "conv0" and first.params.max_tokens == 2
    (other,) = driver.pop_due(2.5)
    assert other.prompt_token_ids == [0, 0, 0] and not other.keep_kv  # placeholder ids, last turn
    driver.on_finished(first.request_id, [5, 6, 7, 8, 40, 41], now=3.0)
    assert driver.next_arrival_time() == 3.5
    (second,) = driver.pop_due(3.5)
    assert second.prompt_token_ids == [5, 6, 7, 8, 40, 41, 0, 0] and second.seq_id == "conv0"
    assert not second.keep_kv and second.arrival_time == 3.5
    for request in (other, second):
        assert not driver.done
        driver.on_finished(request.request_id, [], now=4.0)
    assert driver.done


def test_unknown_turns_are_rejected():
    driver = WorkloadDriver(two_conversations())
    with pytest.raises(ValueError, match="'conv9-turn0' is not an outstanding turn"):
        driver.on_finished("conv9-turn0", [], now=0.0)


def test_sleep_until_the_past_returns_at_once():
    start = time.monotonic()
    sleep_until(start - 10.0)
    assert time.monotonic() - start < 1.0
