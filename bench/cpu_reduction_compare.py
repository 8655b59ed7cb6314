"""CPU segmented LSE: the C++ reduction (fastood._C) against torch reductions.

    python bench/cpu_reduction_compare.py                 # timings at the product shape
    python bench/cpu_reduction_compare.py --sweep         # + row-block size sweep of the C++ path
    python bench/cpu_reduction_compare.py --memory        # + peak extra memory of each path

Product shape: B=4096 images, D=512, a bank of N=11,400 rows split into one
segment of 1,000 (ID labels) and 100 groups of 104 (NegLabel), fp32, 2 threads.
Every path computes the same thing (lse (B, 101), max0 and argmax0 of segment 0)
from the same folded row scale, end to end from x and bank:

- ``torch.mm``          the bare GEMM ``x @ bank.T`` (B×N logits, no reduction): the floor;
- ``cpu (C++)``         fastood.ops._cpu_segment_lse: row blocks, torch.mm into a reused
                        buffer, vectorised C++ reduction (OpenMP, GIL released);
- ``torch groups``      the same row blocks, reduced with ``torch.logsumexp`` over the
                        reshaped equal groups + ``max``/``argmax`` on segment 0;
- ``torch segment_reduce``  the same row blocks, general segments with two
                        ``torch.segment_reduce`` calls (max, then Σ exp(L − max));
- ``torch backend``     fastood.ops._torch_segment_lse (the project's chunked torch path).

Timings interleave the methods round by round (the machine may be shared) and
print the median and the minimum. Target: the C++ path within 1.15× of torch.mm.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_inputs(batch: int, dim: int, n_bank: int, num_id: int, groups: int, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, generator=gen).to(dtype)
    bank = torch.nn.functional.normalize(torch.randn(n_bank, dim, generator=gen), dim=1).to(dtype)
    size = (n_bank - num_id) // groups
    offsets = torch.tensor([0, num_id] + [num_id + (g + 1) * size for g in range(groups)], dtype=torch.int64)
    if offsets[-1].item() != n_bank:
        raise SystemExit(f"N - num_id = {n_bank - num_id} is not a multiple of groups = {groups}")
    row_scale = 100.0 / torch.linalg.vector_norm(x.float(), dim=1)
    return x, bank, offsets, row_scale


# ----------------------------------------------------------------- torch reductions
def torch_groups_path(x, bank, offsets, row_scale, block_rows):
    """Row blocks + torch.logsumexp over reshaped runs of equal segments."""
    B, N = x.shape[0], bank.shape[0]
    off = offsets.tolist()
    sizes = [b - a for a, b in zip(off[:-1], off[1:])]
    runs = []  # (first segment, count, size)
    for s, size in enumerate(sizes):
        if runs and runs[-1][2] == size:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1, size)
        else:
            runs.append((s, 1, size))
    bank_t = bank.float().T
    lse = torch.empty(B, len(sizes))
    max0 = torch.empty(B)
    arg0 = torch.empty(B, dtype=torch.int64)
    buf = torch.empty(block_rows, N)
    for r0 in range(0, B, block_rows):
        r1 = min(B, r0 + block_rows)
        L = torch.mm(x[r0:r1] * row_scale[r0:r1, None], bank_t, out=buf[: r1 - r0])
        for first, count, size in runs:
            lo = off[first]
            blk = L[:, lo : lo + count * size].view(r1 - r0, count, size)
            lse[r0:r1, first : first + count] = torch.logsumexp(blk, dim=2)
        m, a = L[:, off[0] : off[1]].max(dim=1)
        max0[r0:r1] = m
        arg0[r0:r1] = a
    return lse, max0, arg0


def torch_segment_reduce_path(x, bank, offsets, row_scale, block_rows):
    """Row blocks + torch.segment_reduce (max, then sum of exp(L - max)) for general segments."""
    B, N = x.shape[0], bank.shape[0]
    S = offsets.numel() - 1
    lengths = offsets[1:] - offsets[:-1]
    bank_t = bank.float().T
    lse = torch.empty(B, S)
    max0 = torch.empty(B)
    arg0 = torch.empty(B, dtype=torch.int64)
    buf = torch.empty(block_rows, N)
    n0 = int(offsets[1])
    for r0 in range(0, B, block_rows):
        r1 = min(B, r0 + block_rows)
        R = r1 - r0
        L = torch.mm(x[r0:r1] * row_scale[r0:r1, None], bank_t, out=buf[:R])
        off2 = offsets.expand(R, -1)
        m = torch.segment_reduce(L, "max", offsets=off2, axis=1, unsafe=True)
        m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        e = torch.exp(L - m_safe.repeat_interleave(lengths, dim=1, output_size=N))
        s = torch.segment_reduce(e, "sum", offsets=off2, axis=1, unsafe=True, initial=0.0)
        lse[r0:r1] = m_safe + torch.log(s)
        mx, a = L[:, :n0].max(dim=1)
        max0[r0:r1] = mx
        arg0[r0:r1] = a
    return lse, max0, arg0


# ------------------------------------------------------------------------ timing
def interleaved(methods: dict, repeats: int, warmup: int = 2) -> dict:
    for fn in methods.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def build_methods(x, bank, offsets, row_scale, block_rows):
    from fastood.ops._cpu_segment_lse import segment_lse_cpu
    from fastood.ops._torch_segment_lse import segment_lse_torch

    return {
        "torch.mm (x @ bank.T)": lambda: x @ bank.T,
        "cpu (C++ reduction)": lambda: segment_lse_cpu(x, bank, offsets, row_scale, True, block_rows=block_rows),
        "torch groups (logsumexp)": lambda: torch_groups_path(x, bank, offsets, row_scale, block_rows),
        "torch segment_reduce": lambda: torch_segment_reduce_path(x, bank, offsets, row_scale, block_rows),
        "torch backend (project)": lambda: segment_lse_torch(x, bank, offsets, row_scale, True),
    }


def peak_extra_mb(method: str, args) -> float:
    """Peak RSS growth during one call of ``method``, in a fresh subprocess (Linux).

    The peak (VmHWM) is reset just before the second call (``/proc/self/clear_refs``
    ← 5), so the figure is that call's own high-water mark over the resident inputs;
    what stays cached from the first call (MKL's packing buffers, ~10 MB for any
    torch.mm of this size) is not counted.
    """
    code = (
        "import sys, torch;"
        f"sys.path.insert(0, {str(ROOT)!r});"
        "import bench.cpu_reduction_compare as b;"
        f"torch.set_num_threads({args.threads});"
        f"x, bank, off, rs = b.make_inputs({args.batch}, {args.dim}, {args.bank}, {args.num_id}, {args.groups}, torch.{args.dtype});"
        f"m = b.build_methods(x, bank, off, rs, {args.block_rows})[{method!r}];"
        "m();"  # warm-up: libraries, OpenMP threads, MKL's cached packing buffers
        "kb = lambda key: int([l for l in open('/proc/self/status') if l.startswith(key)][0].split()[1]);"
        "open('/proc/self/clear_refs', 'w').write('5');"
        "before = kb('VmRSS:');"
        "m();"
        "print((kb('VmHWM:') - before) / 1024)"
    )
    # A fixed mmap threshold makes glibc return every large block to the OS on free
    # (the dynamic threshold would recycle freed input temporaries and hide growth).
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--bank", type=int, default=11400)
    p.add_argument("--num-id", type=int, default=1000)
    p.add_argument("--groups", type=int, default=100)
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--block-rows", type=int, default=None, help="row block (default: the launcher's)")
    p.add_argument("--sweep", action="store_true", help="also sweep the C++ path's row-block size")
    p.add_argument("--memory", action="store_true", help="also measure peak extra memory per path")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    from fastood._backends import load_extension
    from fastood.ops._cpu_segment_lse import block_rows_for, segment_lse_cpu

    ext, why = load_extension()
    if ext is None:
        raise SystemExit(why)
    dtype = getattr(torch, args.dtype)
    x, bank, offsets, row_scale = make_inputs(args.batch, args.dim, args.bank, args.num_id, args.groups, dtype)
    args.block_rows = block_rows_for(args.batch, args.bank, args.block_rows)

    print(f"date      {dt.datetime.now().isoformat(timespec='seconds')}")
    print(f"cpu       {cpu_model()} ({os.cpu_count()} logical CPUs), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, _C {ext.build_info()}")
    print(f"shape     B={args.batch} D={args.dim} N={args.bank} segments=1x{args.num_id} + "
          f"{args.groups}x{(args.bank - args.num_id) // args.groups}  dtype={args.dtype}  block_rows={args.block_rows}")
    try:
        print(f"load avg  {os.getloadavg()[0]:.2f} (1 min) before timing")
    except OSError:
        pass

    # correctness cross-check of the paths (fp64 truth on the first rows)
    lse_c, m_c, a_c = segment_lse_cpu(x, bank, offsets, row_scale, True)
    lse_g, m_g, a_g = torch_groups_path(x, bank, offsets, row_scale, args.block_rows)
    lse_s, _, _ = torch_segment_reduce_path(x, bank, offsets, row_scale, args.block_rows)
    k = min(256, args.batch)
    L64 = row_scale[:k].double()[:, None] * (x[:k].double() @ bank.double().T)
    off = offsets.tolist()
    truth = torch.stack([torch.logsumexp(L64[:, a:b], 1) for a, b in zip(off[:-1], off[1:])], 1)
    for name, lse in (("cpu (C++)", lse_c), ("torch groups", lse_g), ("torch segment_reduce", lse_s)):
        print(f"max |lse - fp64 truth| on {k} rows, {name:<22} {(lse[:k].double() - truth).abs().max().item():.2e}")
    print(f"argmax0 equal (C++ vs torch): {bool(torch.equal(a_c, a_g))}, max0 equal: {bool(torch.equal(m_c, m_g))}")

    methods = build_methods(x, bank, offsets, row_scale, args.block_rows)
    times = interleaved(methods, args.repeats)
    base = statistics.median(times["torch.mm (x @ bank.T)"])
    flops = 2.0 * args.batch * args.bank * args.dim
    print(f"\n{'method':<28}{'median ms':>11}{'min ms':>9}{'× mm':>7}{'GFLOP/s':>9}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<28}{med * 1e3:>11.1f}{min(ts) * 1e3:>9.1f}{med / base:>7.2f}{flops / med / 1e9:>9.1f}")

    # the reduction alone, on one block's logits (scaled to the full batch)
    R = args.block_rows
    logits = (x[:R].float() * row_scale[:R, None]) @ bank.float().T
    lse_b = torch.empty(R, offsets.numel() - 1)
    m_b = torch.empty(R)
    a_b = torch.empty(R, dtype=torch.int64)
    n_arr = [t.numpy() for t in (logits, offsets, lse_b, m_b, a_b)]
    red = {
        "C++ reduce": lambda: ext.segment_lse_reduce(*n_arr, args.threads),
        "C++ reduce (generic SIMD)": lambda: ext.segment_lse_reduce(*n_arr, args.threads, "generic"),
        "torch logsumexp groups": lambda: (
            torch.logsumexp(logits[:, : args.num_id], 1),
            torch.logsumexp(logits[:, args.num_id :].view(R, args.groups, -1), 2),
            logits[:, : args.num_id].max(1),
        ),
    }
    rt = interleaved(red, max(5, args.repeats))
    scale = args.batch / R
    print(f"\nreduction only, on a {R}x{args.bank} fp32 block, scaled ×{scale:.0f} to B={args.batch}:")
    for name, ts in rt.items():
        print(f"  {name:<28}{statistics.median(ts) * scale * 1e3:>8.1f} ms  (median; per block {statistics.median(ts) * 1e3:.2f} ms)")

    if args.sweep:
        print("\nrow-block sweep of the C++ path (median ms, interleaved with torch.mm):")
        sweep = {"torch.mm": methods["torch.mm (x @ bank.T)"]}
        for rows in (64, 128, 192, 256, 384, 512, 768):
            sweep[f"rows={rows}"] = (lambda r: lambda: segment_lse_cpu(
                x, bank, offsets, row_scale, True, block_rows=r, max_block_bytes=1 << 40))(rows)
        st = interleaved(sweep, max(5, args.repeats // 2))
        for name, ts in st.items():
            print(f"  {name:<12}{statistics.median(ts) * 1e3:>8.1f}  (× mm {statistics.median(ts) / statistics.median(st['torch.mm']):.2f})")

    if args.memory:
        print("\npeak extra memory of one call (RSS growth, fresh process; inputs excluded):")
        for name in methods:
            print(f"  {name:<28}{peak_extra_mb(name, args):>8.1f} MB")


if __name__ == "__main__":
    main()
