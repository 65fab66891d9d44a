"""Scheduling: requests and conversations, policies (fcfs, priority, vtc, mlfq), priority patterns and
traces, the preemptive scheduler in two modes (chunked, vllm-0.3.3), the adaptive wait-or-overlap
rule for asynchronous swaps (adaptive_swap.py) and run metrics. Nothing here touches tensors: the
scheduler decides and issues its swaps through the `KVSpace` seam (kv_space.py), which the swap
manager (fastswitch/cache) implements; the executor (fastswitch/engine.py) runs the batch."""

from fastswitch.sched.conversation import Conversation
from fastswitch.sched.kv_space import KVSpace
from fastswitch.sched.metrics import RunMetrics, percentile
from fastswitch.sched.mlfq import MLFQPolicy  # importing it registers "mlfq", as a user's plug-in module would
from fastswitch.sched.policies import (
    FCFSPolicy,
    PriorityPolicy,
    SchedulingPolicy,
    VTCPolicy,
    make_policy,
    policy_names,
    register_policy,
)
from fastswitch.sched.priority_patterns import PriorityUpdater
from fastswitch.sched.priority_trace import PriorityTrace
from fastswitch.sched.request import Request, RequestStatus, ScheduledChunk, SchedulerOutput
from fastswitch.sched.scheduler import Scheduler
from fastswitch.sched.vllm_scheduler import VllmScheduler

__all__ = [
    "Conversation",
    "FCFSPolicy",
    "KVSpace",
    "MLFQPolicy",
    "PriorityPolicy",
    "PriorityTrace",
    "PriorityUpdater",
    "Request",
    "RequestStatus",
    "RunMetrics",
    "ScheduledChunk",
    "Scheduler",
    "SchedulerOutput",
    "SchedulingPolicy",
    "VTCPolicy",
    "VllmScheduler",
    "make_policy",
    "policy_names",
    "percentile",
    "register_policy",
]
