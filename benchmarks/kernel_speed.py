"""Kernel bandwidth: paged attention (decode, prefill) and swap pack/unpack, against their physical limits.

Attention is memory-bound in decode, so it is measured as bytes of KV read per second, and compared
  - with the device's peak memory bandwidth (a table by device name; unknown devices use a measured
    device-to-device copy),
  - with torch.nn.functional.scaled_dot_product_attention on the same K/V gathered into contiguous
    [B, Hkv, L, D] tensors (the gather is done before the clock starts: SDPA is the dense ideal).
pack/unpack (a fragmented sequence's block runs <-> one staging tensor) is compared with one
contiguous copy of the same bytes on the same device.

On CUDA the Triton kernels run (bf16, Llama-3-8B head shapes: 32 query heads, 8 KV heads, head dim
128, 16-token blocks). On a machine without CUDA only the torch path runs (float32, smaller sizes),
and the table says so: the Triton interpreter measures Python, not a kernel. pack writes into a
reused staging buffer (pack_blocks(..., out=)), as a swap manager would, so both sides of the
comparison move the same bytes into already-mapped memory.

    python benchmarks/kernel_speed.py [--repeats 10]
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from fastswitch.kernels import pack_blocks, paged_attention, unpack_blocks
from fastswitch.sim.calibrate import median_seconds

BLOCK_SIZE = 16
NUM_Q_HEADS, NUM_KV_HEADS, HEAD_DIM = 32, 8, 128  # Llama-3-8B
PEAK_BANDWIDTH = {  # bytes/s by the end of torch.cuda.get_device_name(), from the vendors' data sheets
    "H100 80GB HBM3": 3.35e12,  # H100 SXM (docs/references.md)
    "H100 PCIe": 2.0e12,
    "H200": 4.8e12,  # NVIDIA's H200 data sheet (docs/references.md)
    "A100-SXM4-80GB": 2.039e12,
    "A100 80GB PCIe": 1.935e12,
    "A10": 600e9,
}


@dataclass
class Row:
    kernel: str
    shape: str
    backend: str
    bytes: int
    seconds: float
    gbps: float
    baseline: str
    baseline_gbps: float
    percent_of_baseline: float
    percent_of_peak: float | None


def copy_bandwidth(num_bytes: int, device: torch.device, repeats: int) -> float:
    """Bytes/s of one contiguous same-device copy of num_bytes (counting the bytes once, as moved)."""
    src = torch.empty(num_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return num_bytes / median_seconds(lambda: dst.copy_(src), device, repeats)


def fragmented_tables(num_seqs: int, blocks_per_seq: int, num_blocks: int, rng: random.Random) -> list[list[int]]:
    """Block tables scattered over the pool, as a long-running serving allocator leaves them."""
    ids = rng.sample(range(num_blocks), num_seqs * blocks_per_seq)
    return [ids[i * blocks_per_seq : (i + 1) * blocks_per_seq] for i in range(num_seqs)]


def attention_row(
    name: str, num_seqs: int, context: int, query_len: int, dtype: torch.dtype, device: torch.device,
    backend: str, peak: float | None, repeats: int, rng: random.Random,
) -> Row:
    blocks_per_seq = -(-context // BLOCK_SIZE)
    num_blocks = num_seqs * blocks_per_seq + 64
    k_cache = torch.randn(num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM, dtype=dtype, device=device)
    v_cache = torch.randn_like(k_cache)
    tables = fragmented_tables(num_seqs, blocks_per_seq, num_blocks, rng)
    block_tables = torch.tensor(tables, dtype=torch.int32, device=device)
    seq_lens = torch.full((num_seqs,), context, dtype=torch.int32, device=device)
    query_start_loc = torch.arange(0, (num_seqs + 1) * query_len, query_len, dtype=torch.int32, device=device)
    q = torch.randn(num_seqs * query_len, NUM_Q_HEADS, HEAD_DIM, dtype=dtype, device=device)
    seconds = median_seconds(
        lambda: paged_attention(q, k_cache, v_cache, block_tables, seq_lens, query_start_loc, backend=backend),
        device, repeats,
    )

    # The same K/V gathered contiguously [B, Hkv, L, D], for the dense ideal.
    flat = torch.tensor(tables, device=device).view(-1).long()
    keys = k_cache[flat].view(num_seqs, -1, NUM_KV_HEADS, HEAD_DIM)[:, :context].transpose(1, 2).contiguous()
    values = v_cache[flat].view(num_seqs, -1, NUM_KV_HEADS, HEAD_DIM)[:, :context].transpose(1, 2).contiguous()
    queries = q.view(num_seqs, query_len, NUM_Q_HEADS, HEAD_DIM).transpose(1, 2)
    # Decode needs no mask (the one query sees every key); a prefill is causal.
    causal = query_len == context
    dense_seconds = median_seconds(
        lambda: F.scaled_dot_product_attention(queries, keys, values, is_causal=causal, enable_gqa=True),
        device, repeats,
    )
    kv_bytes = 2 * num_seqs * context * NUM_KV_HEADS * HEAD_DIM * k_cache.element_size()
    return Row(
        kernel="paged_attention",
        shape=f"{name}: {num_seqs} x {context} ctx, q_len {query_len}",
        backend=backend,
        bytes=kv_bytes,
        seconds=seconds,
        gbps=kv_bytes / seconds / 1e9,
        baseline="SDPA contiguous",
        baseline_gbps=kv_bytes / dense_seconds / 1e9,
        percent_of_baseline=100 * dense_seconds / seconds,
        percent_of_peak=None if peak is None else 100 * kv_bytes / seconds / peak,
    )


def pack_rows(
    num_layers: int, tokens: int, dtype: torch.dtype, device: torch.device, backend: str,
    peak: float | None, repeats: int, rng: random.Random,
) -> list[Row]:
    num_run_blocks = tokens // BLOCK_SIZE
    # A fragmented sequence: runs of 1-8 blocks with gaps of 0-2; three times its size always fits.
    runs, start, remaining = [], 0, num_run_blocks
    while remaining:
        length = min(rng.randint(1, 8), remaining)
        runs.append((start, length))
        start += length + rng.randint(0, 2)
        remaining -= length
    num_blocks = 3 * num_run_blocks
    cache = torch.randn(num_blocks, num_layers, 2, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM, dtype=dtype, device=device)
    staging = pack_blocks(cache, runs, backend=backend)
    num_bytes = staging.numel() * staging.element_size()
    copy_gbps = copy_bandwidth(num_bytes, device, repeats) / 1e9
    rows = []
    for name, fn in (
        ("pack_blocks", lambda: pack_blocks(cache, runs, backend=backend, out=staging)),
        ("unpack_blocks", lambda: unpack_blocks(staging, cache, runs, backend=backend)),
    ):
        seconds = median_seconds(fn, device, repeats)
        rows.append(Row(
            kernel=name,
            shape=f"{len(runs)} runs, {staging.shape[0]} blocks x {num_layers} layers",
            backend=backend,
            bytes=num_bytes,
            seconds=seconds,
            gbps=num_bytes / seconds / 1e9,
            baseline="contiguous copy",
            baseline_gbps=copy_gbps,
            percent_of_baseline=100 * num_bytes / seconds / 1e9 / copy_gbps,
            percent_of_peak=None if peak is None else 100 * 2 * num_bytes / seconds / peak,  # read + write
        ))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)

    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    if on_gpu:
        device_name = torch.cuda.get_device_name(device)
        # Match the end of the name: "A10" must not match "NVIDIA A100-SXM4-40GB".
        peak = next((bw for key, bw in PEAK_BANDWIDTH.items() if device_name.endswith(key)), None)
        peak_source = "data sheet"
        if peak is None:  # an unlisted device: a large copy reads and writes each byte once
            peak = 2 * copy_bandwidth(1 << 30, device, args.repeats)
            peak_source = "measured 1 GiB device copy (read + write)"
        backend, dtype = "triton", torch.bfloat16
        decode = [("decode", 32, 4096, 1), ("decode", 4, 16384, 1)]
        prefill, pack = [("prefill", 4, 2048, 2048)], (32, 4096)
    else:
        device_name, peak, peak_source = "cpu", None, None
        backend, dtype = "torch", torch.float32
        # One thread: the machine is shared, and two OpenMP threads contending for busy cores turn
        # every small op into a scheduler wait.
        torch.set_num_threads(1)
        decode, prefill, pack = [("decode", 4, 1024, 1)], [("prefill", 1, 512, 512)], (8, 1024)
        print(
            "No CUDA device: measuring the torch path only (float32, small shapes); "
            "the Triton interpreter is not a kernel.\n"
        )

    rows = [attention_row(*case, dtype, device, backend, peak, args.repeats, rng) for case in decode + prefill]
    rows += pack_rows(*pack, dtype, device, backend, peak, args.repeats, rng)

    peak_text = "" if peak is None else f"   peak: {peak / 1e9:.0f} GB/s ({peak_source})"
    print(f"device: {device_name}   backend: {backend}   dtype: {dtype}{peak_text}")
    header = (
        f"{'kernel':<16} {'shape':<40} {'ms':>8} {'GB/s':>8} {'baseline':<16} {'GB/s':>8} {'% base':>7} {'% peak':>7}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        peak_text = "-" if row.percent_of_peak is None else f"{row.percent_of_peak:.1f}"
        print(
            f"{row.kernel:<16} {row.shape:<40} {1e3 * row.seconds:>8.2f} {row.gbps:>8.2f} "
            f"{row.baseline:<16} {row.baseline_gbps:>8.2f} {row.percent_of_baseline:>7.1f} {peak_text:>7}"
        )
    out = Path(__file__).parent / "results" / "kernel_speed.json"
    out.parent.mkdir(exist_ok=True)
    payload = {
        "device": device_name, "backend": backend, "dtype": str(dtype), "peak_bandwidth": peak,
        "peak_source": peak_source, "rows": [asdict(r) for r in rows],
    }  # fmt: skip
    out.write_text(json.dumps(payload, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
