"""GPEN FullGenerator forward time and peak memory per resolution, CPU, random weights.

    python benchmarks/gpen_speed.py [--sizes 256 512 1024] [--threads 1] [--repeats 2]

Each resolution runs in a fresh subprocess so that its peak resident memory (ru_maxrss) is its own;
the published configurations are used (256: GPEN-BFR-256, 512/1024: channel multiplier 2, narrow 1).
A micro-benchmark also compares our 2x FIR upsampler (one grouped conv_transpose2d) with the
zero-insertion + pad + conv formulation. Writes ``benchmarks/results/gpen_speed.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "gpen_speed.json"


def rss_mib() -> float:
    # ru_maxrss is KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure_one(size: int, threads: int, repeats: int) -> dict:
    import torch

    from faceedit_gpen.model import BFR_CONFIGS, FullGenerator

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    baseline = rss_mib()
    model = FullGenerator(**BFR_CONFIGS[size]).eval()
    parameters = sum(p.numel() for p in model.parameters())
    after_build = rss_mib()
    x = torch.rand(1, 3, size, size) * 2 - 1
    times = []
    with torch.inference_mode():
        start = time.perf_counter()
        y = model(x)
        first = time.perf_counter() - start
        for _ in range(repeats):
            start = time.perf_counter()
            y = model(x)
            times.append(time.perf_counter() - start)
    peak = rss_mib()
    return {
        "size": size, "config": BFR_CONFIGS[size], "parameters": parameters, "threads": threads,
        "first_forward_s": round(first, 3), "forward_s": [round(t, 3) for t in times],
        "forward_s_best": round(min(times), 3) if times else round(first, 3),
        "peak_rss_mib": round(peak, 1), "model_rss_mib": round(after_build - baseline, 1),
        "forward_extra_rss_mib": round(peak - after_build, 1), "output_finite": bool(torch.isfinite(y).all()),
    }


def fir_microbenchmark(threads: int) -> dict:
    """Our upsampler vs the zero-insert + pad + depthwise-conv formulation on a 512-channel 64x64 map."""
    import torch
    from torch.nn import functional as F

    from faceedit_gpen.model import fir_upsample2x, make_blur_kernel

    torch.set_num_threads(threads)
    kernel = make_blur_kernel((1, 3, 3, 1)) * 4
    x = torch.randn(1, 256, 128, 128)

    def zero_insert(x):
        n, c, h, w = x.shape
        up = x.new_zeros(n, c, h, 2, w, 2)
        up[:, :, :, 0, :, 0] = x
        up = F.pad(up.reshape(n, c, 2 * h, 2 * w), (2, 1, 2, 1))
        return F.conv2d(up, torch.flip(kernel, (0, 1))[None, None].expand(c, 1, 4, 4), groups=c)

    def best(fn, repeats=5):
        out, times = None, []
        with torch.inference_mode():
            for _ in range(repeats):
                start = time.perf_counter()
                out = fn(x)
                times.append(time.perf_counter() - start)
        return out, min(times)

    ours, t_ours = best(lambda x: fir_upsample2x(x, kernel, (2, 1)))
    ref, t_ref = best(zero_insert)
    return {"shape": list(x.shape), "ours_conv_transpose_s": round(t_ours, 4), "zero_insert_conv_s": round(t_ref, 4),
            "max_abs_diff": float((ours - ref).abs().max())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # child process
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(measure_one(args.one, args.threads, args.repeats)))
        return 0
    import torch

    runs = []
    for size in args.sizes:
        proc = subprocess.run([sys.executable, __file__, "--one", str(size), "--threads", str(args.threads),
                               "--repeats", str(args.repeats)], capture_output=True, text=True)
        if proc.returncode != 0:
            runs.append({"size": size, "error": proc.stderr.strip().splitlines()[-1:]})
        else:
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]), flush=True)
    report = {
        "what": "GPEN FullGenerator forward, batch 1, random weights, torch.inference_mode(), float32, CPU",
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "cpu_count": __import__("os").cpu_count(), "threads": args.threads,
        "note": "shared 2-core machine under load from other jobs: times are upper bounds",
        "runs": runs, "fir_upsample_microbenchmark": fir_microbenchmark(args.threads),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
