"""Train the compact restorer on CelebA faces with synthetic degradations: ``faceedit train restorer ...``.

Images are read from ``--data`` (aligned CelebA JPEGs, sorted by name); the last ``--val-count`` are held
out. Each step draws random crops of clean faces, degrades them on the fly (``degrade.py``) and
minimises the L1 error of the restored crop. The learning rate follows a cosine over the run's
progress (steps or wall-clock minutes, whichever budget is given). ``--resume`` continues from the
checkpoint (tensors and plain values only, read with ``weights_only=True``); ``--export`` writes the
float16 state dict that ships in this plugin's ``models/`` folder.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "celeba" / "images"


def load_images(folder: Path, limit: int | None = None) -> list[np.ndarray]:
    from PIL import Image

    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if limit:
        files = files[:limit]
    if not files:
        raise FileNotFoundError(f"no images in {folder}")
    return [np.asarray(Image.open(p).convert("RGB")) for p in files]


def split(images: list[np.ndarray], val_count: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    if len(images) <= val_count:
        val_count = max(1, len(images) // 10)
    return images[:-val_count], images[-val_count:]


def validation_pairs(images: list[np.ndarray], seed: int = 1234) -> list[tuple[np.ndarray, np.ndarray]]:
    """Fixed (target, degraded) pairs: the same degradations for every evaluation."""
    from .degrade import degrade

    rng = np.random.default_rng(seed)
    return [degrade(image, rng) for image in images]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def random_batch(images, rng, batch: int, crop: int):
    from .degrade import degrade

    clean, degraded = [], []
    for _ in range(batch):
        image = images[rng.integers(len(images))]
        height, width = image.shape[:2]
        top = int(rng.integers(0, height - crop + 1))
        left = int(rng.integers(0, width - crop + 1))
        patch = image[top:top + crop, left:left + crop]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        target, low = degrade(np.ascontiguousarray(patch), rng)
        clean.append(target)
        degraded.append(low)
    return np.stack(clean), np.stack(degraded)


def to_tensor(batch_uint8):
    import torch

    return torch.from_numpy(batch_uint8).permute(0, 3, 1, 2).float() / 255.0


def export_weights(model, path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().half() for k, v in model.state_dict().items()}, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="faceedit train restorer", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of aligned face images")
    parser.add_argument("--checkpoint", type=Path, default=Path("restore_compact_ckpt.pt"))
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    parser.add_argument("--export", type=Path, default=None, help="write float16 weights here at the end")
    parser.add_argument("--steps", type=int, default=None, help="step budget")
    parser.add_argument("--minutes", type=float, default=None, help="wall-clock budget (training time only)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--crop", type=int, default=88, help="training crop side (multiple of 4)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--val-count", type=int, default=500, help="last N images held out")
    parser.add_argument("--val-every", type=int, default=250)
    parser.add_argument("--val-images", type=int, default=64, help="held-out images scored during training")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images (tests)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=None, help="network width (default: shipped config)")
    parser.add_argument("--checkpoint-every", type=float, default=120.0, help="seconds between checkpoints")
    args = parser.parse_args(argv)
    if args.steps is None and args.minutes is None:
        args.steps = 1000
    if args.crop % 4:
        parser.error("--crop must be a multiple of 4")

    import torch

    from napari_faceedit.weights import WeightsError, read_checkpoint

    from .restore_net import DEFAULT_CONFIG, CompactRestorer, count_parameters, restore_image

    state = None
    if args.resume and args.checkpoint.exists():  # read before the data: a bad checkpoint fails at once
        try:
            state = read_checkpoint(args.checkpoint)
        except WeightsError as exc:
            print(f"--resume: {exc}", file=sys.stderr)
            return 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    images = load_images(args.data, args.limit)
    train_images, val_images = split(images, args.val_count)
    if min(min(im.shape[:2]) for im in train_images) < args.crop:
        parser.error(f"--crop {args.crop} is larger than some training images")
    val_pairs = validation_pairs(val_images[: args.val_images])

    config = dict(DEFAULT_CONFIG)
    if args.width:
        config["width"] = args.width
    model = CompactRestorer(**config)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.99))
    step, elapsed = 0, 0.0
    rng = np.random.default_rng(args.seed)
    if state is not None:
        config = state["config"]
        model = CompactRestorer(**config)
        model.load_state_dict(state["model"])
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.99))
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed = state["step"], state["elapsed"]
        rng.bit_generator.state = state["rng"]
        print(f"resumed from {args.checkpoint} at step {step} ({elapsed / 60:.1f} min trained)", flush=True)
    print(f"train {len(train_images)} / val {len(val_images)} images, {count_parameters(model)} parameters, "
          f"config {json.dumps(config)}", flush=True)

    def progress() -> float:
        fractions = []
        if args.steps is not None:
            fractions.append(step / args.steps)
        if args.minutes is not None:
            fractions.append(elapsed / (60.0 * args.minutes))
        return max(fractions)

    def save_checkpoint() -> None:
        args.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.checkpoint.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                    "elapsed": elapsed, "rng": rng.bit_generator.state, "config": config}, tmp)
        tmp.replace(args.checkpoint)

    def validate() -> float:
        model.eval()
        scores = [psnr(restore_image(model, low), target) for target, low in val_pairs]
        model.train()
        return float(np.mean(scores))

    baseline = float(np.mean([psnr(low, target) for target, low in val_pairs]))
    print(f"validation PSNR of the degraded input: {baseline:.2f} dB", flush=True)
    last_save = time.perf_counter()
    running = []
    model.train()
    while progress() < 1.0:
        start = time.perf_counter()
        lr = args.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress()))))
        warmup = min(1.0, (step + 1) / 100)
        for group in optimizer.param_groups:
            group["lr"] = lr * warmup
        clean, degraded = random_batch(train_images, rng, args.batch, args.crop)
        target, source = to_tensor(clean), to_tensor(degraded)
        loss = (model(source) - target).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        elapsed += time.perf_counter() - start
        running.append(float(loss.detach()))
        if step % 50 == 0:
            print(f"step {step} loss {np.mean(running):.4f} lr {lr:.2e} {elapsed / 60:.1f} min", flush=True)
            running = []
        if step % args.val_every == 0:
            print(f"step {step} validation PSNR {validate():.2f} dB (input {baseline:.2f})", flush=True)
        if time.perf_counter() - last_save > args.checkpoint_every:
            save_checkpoint()
            last_save = time.perf_counter()
    save_checkpoint()
    print(f"done: step {step}, {elapsed / 60:.1f} min, validation PSNR {validate():.2f} dB "
          f"(input {baseline:.2f})", flush=True)
    if args.export:
        export_weights(model, args.export)
        print(f"exported float16 weights to {args.export}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
