"""keep_freed_memory: a CPU process keeps its freed step temporaries instead of returning them to the kernel.

Each case runs in a fresh interpreter, since the setting is process-wide and once set stays set.
glibc's mallinfo2 reports the free bytes its heap holds: with the setting, five freed 20 MiB
temporaries stay there (the next step reuses them without a page fault); with glibc's defaults they
were mmapped and went back to the kernel.
"""

import platform
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="the setting is glibc's"
)

HEAP_FREE_AFTER_STEP = """
import ctypes, sys, torch

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Mallinfo2  # glibc 2.33 and later
if sys.argv[1] == "keep":
    from fastswitch.models.cpu_allocator import keep_freed_memory
    assert keep_freed_memory()
elif sys.argv[1] == "runner":  # a ModelRunner over a CPU model applies it
    from fastswitch.cache import KVCache
    from fastswitch.models import ModelRunner, load_model
    from tiny_llamas import tiny_llama
    model = load_model(tiny_llama(), progress=False).model
    ModelRunner(model, KVCache(4, model.num_layers, 8, model.num_kv_heads, model.head_dim, model.dtype, "cpu"))
temporaries = [torch.ones(5 << 20) for _ in range(5)]  # five 20 MiB float32 tensors, freed together
del temporaries
print(libc.mallinfo2().fordblks >> 20)
"""


def heap_free_mib(mode: str) -> int:
    tests = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(tests)!r})\n" + HEAP_FREE_AFTER_STEP, mode],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    return int(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode", ["keep", "runner"])
def test_freed_temporaries_stay_in_the_heap(mode):
    assert heap_free_mib(mode) >= 100


def test_glibc_defaults_give_them_back():
    """What the setting changes: without it the same temporaries leave the heap."""
    assert heap_free_mib("default") < 100
