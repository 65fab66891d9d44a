#!/usr/bin/env bash
# What only a GPU can tell, in one run sized for one 10-minute call on a lent GPU machine:
#   1. the kernel tests with the Triton kernels compiled for real (against the CPU twins), the swap
#      manager on a CUDA device pool (pinned host pool, copy stream, pack kernel), and greedy
#      generation through the Triton kernels against transformers;
#   2. benchmarks/kernel_speed.py: decode/prefill KV bandwidth against peak HBM and SDPA, pack/unpack
#      against a device copy;
#   3. benchmarks/swap_copy.py: pinned host <-> device bandwidth by copy granularity.
# Needs torch, triton (3.6 or newer), transformers, pytest, pytest-xdist, hypothesis and einops, which
# the lent machine has; the package runs from the working tree. Results go to $OUT (default
# benchmarks/results/gpu): six files, each step's log beside the benchmarks' JSON.
#
#     bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results/gpu}
mkdir -p "$out"
export PYTHONPATH=. PYTHONUNBUFFERED=1

{
    nvidia-smi --query-gpu=name,memory.total,pcie.link.gen.max,pcie.link.width.max,driver_version --format=csv
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee "$out/device.txt"

# Workers compile kernels in parallel: each new tile shape is a fresh compilation.
timeout 300 python3 -m pytest -q -n 8 -p no:cacheprovider \
    tests/kernels tests/cache/test_swap_manager.py tests/cache/test_kv_cache.py tests/models/test_greedy_parity.py \
    2>&1 | tee "$out/tests.txt"
status=$?

timeout 120 python3 benchmarks/kernel_speed.py 2>&1 | tee "$out/kernel_speed.txt"
timeout 120 python3 benchmarks/swap_copy.py --repeats 10 2>&1 | tee "$out/swap_copy.txt"
cp benchmarks/results/kernel_speed.json benchmarks/results/swap_copy.json "$out"/ 2>/dev/null
exit $status
