"""StarGAN generator speed and memory on CPU (and CUDA when present), random weights.

Generator(64, 5, 6) (the official CelebA layout), batch 1, at 128 and 256 px. Variants:
* ``no_grad``: plain fp32, NCHW, ``torch.no_grad()`` (the authors' test script);
* ``inference_mode``: ``torch.inference_mode()`` (no autograd version counters / views tracking);
* ``inference_mode+channels_last``: also NHWC memory format, which oneDNN convolutions prefer.
We record wall time and process CPU time. Each configuration runs in a fresh subprocess so that peak memory (ru_maxrss) is its own; we report
the peak RSS of the process and its growth during the forward passes over the state after loading.

    .venv/bin/python benchmarks/stargan_speed.py [--threads 1 2] [--repeats 5]

Results: ``benchmarks/results/stargan_speed.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("no_grad", "inference_mode", "inference_mode+channels_last")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(size: int, variant: str, threads: int, repeats: int, device: str) -> dict:
    import torch

    sys.path.insert(0, str(REPO / "plugins" / "faceedit_stargan"))
    from faceedit_stargan.model import Generator

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    G = Generator(64, 5, 6).eval().to(device)
    x = torch.rand(1, 3, size, size, device=device) * 2 - 1
    c = torch.tensor([[0, 1, 0, 1, 1]], dtype=torch.float32, device=device)
    if "channels_last" in variant:
        G = G.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    context = torch.no_grad if variant == "no_grad" else torch.inference_mode
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    base_rss = _rss_mb()
    times, cpu_times = [], []
    with context():
        G(x, c)  # warm-up: oneDNN primitive creation, allocator
        for _ in range(repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            tic, cpu_tic = time.perf_counter(), time.process_time()
            y = G(x, c)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - tic)
            cpu_times.append(time.process_time() - cpu_tic)
    assert y.shape == (1, 3, size, size)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"size": size, "variant": variant, "threads": threads, "device": device,
           "median_ms": round(statistics.median(times) * 1000, 1), "min_ms": round(min(times) * 1000, 1),
           "median_cpu_ms": round(statistics.median(cpu_times) * 1000, 1),
           "repeats": repeats, "peak_rss_mb": round(peak_rss, 1),
           "forward_rss_growth_mb": round(peak_rss - base_rss, 1)}
    if device.startswith("cuda"):
        out["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def summarise(rows: list[dict]) -> dict:
    """Per size: single-thread CPU time of each variant, relative to the authors' no_grad baseline."""
    summary = {}
    for size in sorted({r["size"] for r in rows}):
        one = {r["variant"]: r for r in rows if r["size"] == size and r["threads"] == 1 and r["device"] == "cpu"}
        if "no_grad" not in one:
            continue
        base = one["no_grad"]["median_cpu_ms"]
        summary[f"{size}px_cpu_1_thread"] = {
            v: {"median_cpu_ms": r["median_cpu_ms"], "vs_no_grad": round(r["median_cpu_ms"] / base, 3),
                "forward_rss_growth_mb": r["forward_rss_growth_mb"]} for v, r in one.items()}
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--one", nargs=4, metavar=("SIZE", "VARIANT", "THREADS", "DEVICE"), help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "stargan_speed.json")
    p.add_argument("--summarise-only", action="store_true", help="recompute the summary of an existing --out file")
    args = p.parse_args(argv)
    if args.summarise_only:
        result = json.loads(args.out.read_text())
        result = {"summary": summarise(result["results"]), **{k: v for k, v in result.items() if k != "summary"}}
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result["summary"], indent=1))
        return 0
    if args.one:  # child process: one configuration
        size, variant, threads, device = args.one
        print(json.dumps(measure(int(size), variant, int(threads), args.repeats, device)))
        return 0

    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for size in args.sizes:
            for threads in (args.threads if device == "cpu" else [1]):
                for variant in args.variants:
                    cmd = [sys.executable, __file__, "--repeats", str(args.repeats),
                           "--one", str(size), variant, str(threads), device]
                    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
                    row = json.loads(done.stdout.strip().splitlines()[-1])
                    print(row, flush=True)
                    rows.append(row)
    result = {
        "summary": summarise(rows),
        "model": "StarGAN Generator(conv_dim=64, c_dim=5, repeat_num=6), random weights, batch 1",
        "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
        "cpu_count": os.cpu_count(), "load_average_at_end": os.getloadavg(),
        "note": ("median_ms is wall time, median_cpu_ms the CPU time of all the process's threads. On a "
                 "shared, busy machine wall times are inflated by waiting; with 1 thread the CPU time is "
                 "close to the wall time the forward takes on an idle core."),
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
