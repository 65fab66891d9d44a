"""Test-wide set-up.

Triton's interpreter must be chosen before triton is first imported, so this runs before any test
module imports fastswitch.kernels: on a machine without CUDA the real Triton kernels then run on CPU
tensors. Hypothesis profiles: `ci` (default, quick) and `thorough` (HYPOTHESIS_PROFILE=thorough).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Tiny test models gain nothing from intra-op threads, and on a busy 2-core machine two threads make
# a small matmul hundreds of times slower (measured: 31 us with one thread, 7-14 ms with two).
torch.set_num_threads(int(os.environ.get("FASTSWITCH_TEST_THREADS", "1")))

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.register_profile(
    "thorough",
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
