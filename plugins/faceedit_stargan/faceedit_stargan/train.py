"""StarGAN training as in the paper: ``faceedit train stargan --data DIR --attributes FILE ...``.

Losses (Choi et al. 2018, Sec. 3 and 4): WGAN-GP adversarial loss (lambda_gp 10), domain
classification loss on real images for D and on fakes for G (lambda_cls 1), cycle reconstruction
L1 loss (lambda_rec 10). Adam lr 1e-4, betas (0.5, 0.999); one G update per n_critic = 5 D updates.
Targets are the batch's own labels randomly permuted (the authors' sampling), with hair colours
kept mutually exclusive. Optional linear learning-rate decay to 0 over the last ``--decay-iterations``.

Checkpoints (``OUT/checkpoints/step_XXXXXXXX.pt``) hold G, D, both optimisers, the step and the
RNG states (as tensors and plain lists: read back with ``weights_only=True``, never unpickled), so
``--resume`` continues exactly where the latest one stopped. ``OUT/G_latest.pt`` is the
generator state dict alone (official key layout) and ``OUT/generator.json`` its constructor.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from napari_faceedit.training import CheckpointError, read_training_checkpoint, restore_rng_states, rng_states, save_atomically

from .data import AttributeFaces
from .model import CELEBA_ATTRIBUTES_5, Discriminator, Generator, default_d_repeat_num

HAIR_COLOR_NAMES = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")
KEEP_CHECKPOINTS = 3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="faceedit train stargan", description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="folder of aligned face images")
    p.add_argument("--attributes", type=Path, required=True,
                   help="CelebA attribute table (CSV 'filename,...' with 1/-1, or list_attr_celeba.txt)")
    p.add_argument("--out", type=Path, required=True, help="output folder (checkpoints, samples, log)")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--crop-size", type=int, default=None,
                   help="centre crop before resizing (178 for 178x218 CelebA; default: largest square)")
    p.add_argument("--iterations", type=int, default=200000, help="total iterations (D updates)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--attrs", nargs="+", default=list(CELEBA_ATTRIBUTES_5), help="selected attributes")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--conv-dim", type=int, default=64, help="generator width")
    p.add_argument("--d-conv-dim", type=int, default=64)
    p.add_argument("--repeat-num", type=int, default=6, help="generator residual blocks")
    p.add_argument("--d-repeat-num", type=int, default=None, help="discriminator strided convs (default 6 at >= 128 px)")
    p.add_argument("--lr", type=float, default=1e-4, help="G and D learning rate")
    p.add_argument("--beta1", type=float, default=0.5)
    p.add_argument("--beta2", type=float, default=0.999)
    p.add_argument("--n-critic", type=int, default=5)
    p.add_argument("--lambda-cls", type=float, default=1.0)
    p.add_argument("--lambda-rec", type=float, default=10.0)
    p.add_argument("--lambda-gp", type=float, default=10.0)
    p.add_argument("--decay-iterations", type=int, default=0,
                   help="decay the lr linearly to 0 over the last N iterations (paper: half of them); 0 = off")
    p.add_argument("--checkpoint-every", type=int, default=10000)
    p.add_argument("--sample-every", type=int, default=1000)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--max-images", type=int, default=None, help="use only the first N images")
    p.add_argument("--hold-out", type=int, default=0, help="leave the last N listed images out of training")
    p.add_argument("--no-flip", action="store_true", help="disable random horizontal flips")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    return p


# -- pieces of the objective ---------------------------------------------------------------------
def classification_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy summed over attributes, averaged over the batch (authors' CelebA loss)."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / logits.size(0)


def gradient_penalty(critic, x_real: torch.Tensor, x_fake: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """(||grad_x D(x_hat)||_2 - 1)^2 on random interpolates (Gulrajani et al. 2017)."""
    x_hat = (alpha * x_real + (1 - alpha) * x_fake).requires_grad_(True)
    out_src, _ = critic(x_hat)
    grad = torch.autograd.grad(out_src, x_hat, grad_outputs=torch.ones_like(out_src),
                               create_graph=True, retain_graph=True)[0]
    norm = grad.flatten(1).norm(2, dim=1)
    return ((norm - 1) ** 2).mean()


def exclusive_hair(labels: torch.Tensor, selected: tuple[str, ...], rng: torch.Generator) -> torch.Tensor:
    """Keep at most one hair colour per row (a random one of those set)."""
    hair = [i for i, name in enumerate(selected) if name in HAIR_COLOR_NAMES]
    if len(hair) < 2:
        return labels
    labels = labels.clone()
    block = labels[:, hair]
    several = block.sum(1) > 1
    if several.any():
        noise = torch.rand(block.shape, generator=rng) * block  # random choice among the set ones
        keep = F.one_hot(noise.argmax(1), len(hair)).to(labels.dtype)
        block[several] = keep[several]
        labels[:, hair] = block
    return labels


def random_targets(labels: torch.Tensor, selected: tuple[str, ...], rng: torch.Generator) -> torch.Tensor:
    """The authors' target sampling: the batch's labels in a random order."""
    order = torch.randperm(labels.size(0), generator=rng)
    return exclusive_hair(labels[order], selected, rng)


def demo_targets(labels: torch.Tensor, selected: tuple[str, ...]) -> list[torch.Tensor]:
    """One target per attribute for sample grids: each hair colour set (others cleared), others flipped."""
    hair = [i for i, name in enumerate(selected) if name in HAIR_COLOR_NAMES]
    targets = []
    for i, _ in enumerate(selected):
        t = labels.clone()
        if i in hair:
            t[:, hair] = 0
            t[:, i] = 1
        else:
            t[:, i] = 1 - t[:, i]
        targets.append(t)
    return targets


def learning_rate(base: float, step: int, iterations: int, decay_iterations: int) -> float:
    if decay_iterations <= 0 or step < iterations - decay_iterations:
        return base
    return base * max(0.0, (iterations - step) / decay_iterations)


# -- checkpoints ---------------------------------------------------------------------------------
def checkpoint_dir(out: Path) -> Path:
    return Path(out) / "checkpoints"


def latest_checkpoint(out: Path) -> Path | None:
    found = sorted(checkpoint_dir(out).glob("step_*.pt"))
    return found[-1] if found else None


def save_checkpoint(out: Path, step: int, G, D, g_opt, d_opt, rng: torch.Generator, config: dict) -> Path:
    folder = checkpoint_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        "step": step, "G": G.state_dict(), "D": D.state_dict(),
        "g_optimizer": g_opt.state_dict(), "d_optimizer": d_opt.state_dict(),
        "rng": rng.get_state(), "rng_states": rng_states("cuda" if torch.cuda.is_available() else "cpu"),
        "config": config,
    }
    path = folder / f"step_{step:08d}.pt"
    save_atomically(state, path)
    save_atomically(G.state_dict(), Path(out) / "G_latest.pt")
    (Path(out) / "generator.json").write_text(json.dumps(
        {"conv_dim": config["conv_dim"], "c_dim": len(config["attrs"]), "repeat_num": config["repeat_num"],
         "attributes": config["attrs"], "image_size": config["image_size"], "step": step}, indent=1))
    for old in sorted(folder.glob("step_*.pt"))[:-KEEP_CHECKPOINTS]:
        old.unlink()
    return path


def save_sample_grid(path: Path, G, x: torch.Tensor, labels: torch.Tensor, selected: tuple[str, ...]) -> None:
    """Rows: fixed images; columns: input, then one edit per selected attribute."""
    from PIL import Image

    was_training = G.training
    G.eval()
    with torch.inference_mode():
        columns = [x] + [G(x, t) for t in demo_targets(labels, selected)]
    G.train(was_training)
    rows = [torch.cat([col[i] for col in columns], dim=2) for i in range(x.size(0))]
    grid = torch.cat(rows, dim=1)
    array = ((grid.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


# -- the loop ------------------------------------------------------------------------------------
def train(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    selected = tuple(args.attrs)
    out = Path(args.out)
    resume_from = latest_checkpoint(out) if args.resume else None
    # Read before the data: a checkpoint that cannot be resumed fails at once (never unpickled).
    state = read_training_checkpoint(resume_from, map_location=device) if resume_from is not None else None
    out.mkdir(parents=True, exist_ok=True)
    data = AttributeFaces(args.data, args.attributes, args.image_size, selected, crop_size=args.crop_size,
                          max_images=args.max_images, skip_last=args.hold_out)
    d_repeat = args.d_repeat_num or default_d_repeat_num(args.image_size)
    config = {"image_size": args.image_size, "conv_dim": args.conv_dim, "d_conv_dim": args.d_conv_dim,
              "repeat_num": args.repeat_num, "d_repeat_num": d_repeat, "attrs": list(selected),
              "crop_size": args.crop_size, "batch_size": args.batch_size, "n_critic": args.n_critic,
              "lr": args.lr, "betas": [args.beta1, args.beta2], "lambda_cls": args.lambda_cls,
              "lambda_rec": args.lambda_rec, "lambda_gp": args.lambda_gp, "iterations": args.iterations,
              "decay_iterations": args.decay_iterations, "n_images": len(data)}

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)
    rng = torch.Generator().manual_seed(args.seed)
    G = Generator(args.conv_dim, len(selected), args.repeat_num).to(device)
    D = Discriminator(args.image_size, args.d_conv_dim, len(selected), d_repeat).to(device)
    g_opt = torch.optim.Adam(G.parameters(), args.lr, (args.beta1, args.beta2))
    d_opt = torch.optim.Adam(D.parameters(), args.lr, (args.beta1, args.beta2))

    start = 0
    if args.resume and state is None:
        print(f"--resume: no checkpoint in {checkpoint_dir(out)}; starting from scratch")
    elif state is not None:
        G.load_state_dict(state["G"])
        D.load_state_dict(state["D"])
        g_opt.load_state_dict(state["g_optimizer"])
        d_opt.load_state_dict(state["d_optimizer"])
        rng.set_state(state["rng"].cpu())
        restore_rng_states({**state["rng_states"], "torch": state["rng_states"]["torch"].cpu(),
                            "cuda": [s.cpu() for s in state["rng_states"]["cuda"]]})
        start = int(state["step"])
        print(f"resumed from {resume_from.name} at step {start}")

    n_fixed = min(4, len(data))
    fixed_x, fixed_c = data.batch(np.arange(n_fixed))
    fixed_x, fixed_c = fixed_x.to(device), fixed_c.to(device)
    log_path = out / "log.jsonl"
    G.train()
    D.train()
    last: dict = {}
    tic = time.perf_counter()
    for step in range(start, args.iterations):
        lr = learning_rate(args.lr, step, args.iterations, args.decay_iterations)
        for group in (*g_opt.param_groups, *d_opt.param_groups):
            group["lr"] = lr
        indices = torch.randint(len(data), (args.batch_size,), generator=rng).numpy()
        flip = None if args.no_flip else (torch.rand(args.batch_size, generator=rng) < 0.5).numpy()
        x_real, c_org = data.batch(indices, flip)
        c_trg = random_targets(c_org, selected, rng)
        alpha = torch.rand(args.batch_size, 1, 1, 1, generator=rng)
        x_real, c_org, c_trg, alpha = (t.to(device) for t in (x_real, c_org, c_trg, alpha))

        # Critic: real/fake Wasserstein estimate, gradient penalty, attribute classification of reals.
        out_src, out_cls = D(x_real)
        d_loss_real = -out_src.mean()
        d_loss_cls = classification_loss(out_cls, c_org)
        with torch.no_grad():
            x_fake = G(x_real, c_trg)
        out_src, _ = D(x_fake)
        d_loss_fake = out_src.mean()
        d_loss_gp = gradient_penalty(D, x_real, x_fake, alpha)
        d_loss = d_loss_real + d_loss_fake + args.lambda_cls * d_loss_cls + args.lambda_gp * d_loss_gp
        d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        d_opt.step()
        losses = {"D/loss_real": d_loss_real.item(), "D/loss_fake": d_loss_fake.item(),
                  "D/loss_cls": d_loss_cls.item(), "D/loss_gp": d_loss_gp.item()}

        # Generator every n_critic steps: fool D, hit the target attributes, reconstruct the input.
        if (step + 1) % args.n_critic == 0:
            x_fake = G(x_real, c_trg)
            out_src, out_cls = D(x_fake)
            g_loss_fake = -out_src.mean()
            g_loss_cls = classification_loss(out_cls, c_trg)
            g_loss_rec = (x_real - G(x_fake, c_org)).abs().mean()
            g_loss = g_loss_fake + args.lambda_rec * g_loss_rec + args.lambda_cls * g_loss_cls
            g_opt.zero_grad(set_to_none=True)
            g_loss.backward()
            g_opt.step()
            losses.update({"G/loss_fake": g_loss_fake.item(), "G/loss_rec": g_loss_rec.item(),
                           "G/loss_cls": g_loss_cls.item()})
        last = {"step": step + 1, "lr": lr, **losses}
        if not all(np.isfinite(v) for v in losses.values()):
            raise FloatingPointError(f"non-finite loss at step {step + 1}: {losses}")

        done = step + 1
        if done % args.log_every == 0 or done == args.iterations:
            last["seconds"] = round(time.perf_counter() - tic, 2)
            with open(log_path, "a") as f:
                f.write(json.dumps(last) + "\n")
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in last.items()),
                  flush=True)
        if done % args.sample_every == 0 or done == args.iterations:
            save_sample_grid(out / "samples" / f"{done:08d}.png", G, fixed_x, fixed_c, selected)
        if done % args.checkpoint_every == 0 or done == args.iterations:
            save_checkpoint(out, done, G, D, g_opt, d_opt, rng, config)
    return {"start_step": start, "step": max(start, args.iterations), "last": last}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.image_size % 4:
        raise SystemExit("--image-size must be a multiple of 4")
    try:
        summary = train(args)
    except CheckpointError as exc:  # a checkpoint that is not weights-only: refused, nothing run
        print(f"--resume: {exc}", file=sys.stderr)
        return 2
    print(f"done: step {summary['step']} (started at {summary['start_step']}); outputs in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
