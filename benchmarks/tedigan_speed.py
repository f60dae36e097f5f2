"""TediGAN StyleGAN generator and encoder speed on CPU (FFHQ-256 layout, random weights, batch 1).

Measured (median of ``--repeats`` after one warm-up, ``torch.set_num_threads(--threads)``):
* ``generate``: mapping + truncation + synthesis under ``torch.no_grad()``;
* ``synthesize``: synthesis only under ``torch.no_grad()``;
* ``synthesize_fwd_bwd``: synthesis forward + backward to the W+ code (one step of TediGAN's
  latent optimisation, without the CLIP and perceptual terms);
* ``encoder``: encoder forward under ``torch.no_grad()``;
* ``encoder_fwd_bwd``: encoder forward + backward to its input image (TediGAN's encoder
  regulariser back-propagates through the encoder into the synthesised image).

    PYTHONPATH=plugins/faceedit_tedigan .venv/bin/python benchmarks/tedigan_speed.py [--threads 2] [--repeats 3]

Results: ``benchmarks/results/tedigan_speed.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _median_seconds(step, repeats: int) -> list[float]:
    step()  # warm-up: oneDNN primitive creation, allocator
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        step()
        times.append(time.perf_counter() - tic)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "tedigan_speed.json")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO / "plugins" / "faceedit_tedigan"))
    import torch
    from faceedit_tedigan.encoder import StyleGANEncoder
    from faceedit_tedigan.stylegan import StyleGANGenerator

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    generator = StyleGANGenerator().eval()
    encoder = StyleGANEncoder().eval()
    z = torch.randn(1, 512)
    with torch.no_grad():
        wp = generator.truncate(generator.map(z))
    image = torch.rand(1, 3, 256, 256) * 2 - 1

    def generate():
        with torch.no_grad():
            generator(z)

    def synthesize():
        with torch.no_grad():
            generator.synthesize(wp)

    def synthesize_fwd_bwd():
        code = wp.clone().requires_grad_(True)
        generator.synthesize(code).square().mean().backward()

    def encode():
        with torch.no_grad():
            encoder(image)

    def encode_fwd_bwd():
        x = image.clone().requires_grad_(True)
        encoder(x).square().mean().backward()

    cases = {"generate": generate, "synthesize": synthesize, "synthesize_fwd_bwd": synthesize_fwd_bwd,
             "encoder": encode, "encoder_fwd_bwd": encode_fwd_bwd}
    load_before = os.getloadavg()[0]
    results = {}
    for name, step in cases.items():
        times = _median_seconds(step, args.repeats)
        results[name] = {"median_s": round(statistics.median(times), 4), "runs_s": [round(t, 4) for t in times]}
        print(f"{name}: {results[name]['median_s']:.3f} s (median of {args.repeats})")

    report = {
        "what": "TediGAN StyleGAN generator (FFHQ 256, 14 layers) and encoder, random weights, batch 1, float32, CPU",
        "threads": args.threads, "repeats": args.repeats, "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        # a shared VM: a 1-minute load average above the thread count means the timings are inflated
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
