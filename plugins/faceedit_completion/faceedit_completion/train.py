"""Train the attribute-controlled face completion GAN (``faceedit train completion``).

``faceedit train completion --data-celeba DIR --data-celebamask DIR --out RUN [--resume]
[--device cuda] [--steps N] [--schedule ...] [--export PATH]``.

Progressive training (Chen et al. 2018 after Karras et al. 2018): the schedule lists resolution
stages, e.g. ``8:1000,16:1000+1000`` = 1000 steps at 8 px, then 1000 steps fading the 16 px levels in
(alpha 0 -> 1) followed by 1000 steps at 16 px. Each step: one critic update (WGAN-GP + drift +
attribute classification of real faces), then one generator update (adversarial + attribute
classification of the completed face + hole-weighted L1 + feature loss + boundary loss).
Adam with the progressive-GAN settings the paper trains with (lr 0.001, betas (0, 0.99), eps 1e-8;
equalised learning rate in every layer). The generator's exponential moving average is what the
dev evaluation, the best-model file and the export use.

Run folder: ``checkpoint_last.pt`` (weights-only: G, EMA G, D, both optimisers, step, stage, alpha,
torch RNG states, config; ``--resume`` continues exactly, since every random draw of step ``k`` comes
from generators seeded with (seed, k)), ``history.json`` (loss averages per logging window and dev
records: L1 in grey levels and PSNR inside the holes), ``generator_best.pt`` (float16 EMA generator
with the best dev L1 at the schedule's last resolution, fully faded in). ``--export PATH`` writes the
float16 generator for shipping (loadable with :func:`faceedit_completion.model.load_generator`).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from napari_faceedit.training import CheckpointError, TrainingLeg, read_training_checkpoint, save_atomically

from . import losses
from .data import DEV_CELEBA, DEV_CELEBAMASK, Batch, dev_batches, load_sources, sample_batch
from .model import (DEFAULT_MAX_CHANNELS, DEFAULT_MAX_RESOLUTION, DEFAULT_WIDTH, CompletionDiscriminator,
                    CompletionGenerator, composite, half_state_dict, n_parameters, resolution_levels)

CHECKPOINT_NAME = "checkpoint_last.pt"
HISTORY_NAME = "history.json"
BEST_NAME = "generator_best.pt"

# Training settings: explicit flags win, then (on --resume) the checkpoint's, then these.
DEFAULTS = {
    "max_resolution": DEFAULT_MAX_RESOLUTION,
    "width": DEFAULT_WIDTH,
    "max_channels": DEFAULT_MAX_CHANNELS,
    # Sized for a CPU: about 3 h on one core (8 px ~10 ms, 128 px ~230 ms per image and step).
    "schedule": "8:1000,16:1000+1000,32:1000+1000,64:1000+1000,128:1000+2000",
    "batch": "8:16,16:16,32:16,64:8,128:8",
    "lr": 1e-3,
    "beta1": 0.0,
    "beta2": 0.99,
    "lambda_adv": 1.0,
    "lambda_gp": 10.0,
    "drift": 1e-3,
    "lambda_attr": 1.0,
    "lambda_rec": 10.0,
    "hole_weight": 5.0,
    "lambda_feat": 1.0,
    "lambda_boundary": 10.0,
    "feature_network": losses.DEFAULT_FEATURE_NETWORK,
    "feature_min_resolution": 32,
    "attribute_dropout": 0.3,
    "celebamask_fraction": 0.3,
    "ema_decay": 0.998,
    "seed": 0,
}


# ------------------------------------------------------------------------------------ schedule
@dataclass(frozen=True)
class Stage:
    resolution: int
    fade: int  # steps with alpha rising from 0 to 1 (0 for the first stage)
    stable: int  # steps with alpha = 1

    @property
    def steps(self) -> int:
        return self.fade + self.stable


def parse_schedule(text: str, start_resolution: int | None = None, max_resolution: int | None = None) -> list[Stage]:
    """``RES:STEPS`` (half fade-in, half stable; the first stage has no fade-in) or ``RES:FADE+STABLE``,
    comma-separated, resolutions doubling from the first."""
    stages = []
    for k, item in enumerate(p.strip() for p in text.split(",") if p.strip()):
        try:
            res_text, steps_text = item.split(":")
            resolution = int(res_text)
            if "+" in steps_text:
                fade, stable = (int(v) for v in steps_text.split("+"))
            else:
                total = int(steps_text)
                fade = 0 if k == 0 else total // 2
                stable = total - fade
        except ValueError:
            raise ValueError(f"schedule item {item!r} must look like 'RES:STEPS' or 'RES:FADE+STABLE'") from None
        if k == 0:
            stable, fade = stable + fade, 0
        if fade < 0 or stable < 0:
            raise ValueError(f"schedule item {item!r}: step counts must be >= 0")
        stages.append(Stage(resolution, fade, stable))
    if not stages:
        raise ValueError("empty schedule")
    for before, after in zip(stages, stages[1:]):
        if after.resolution != 2 * before.resolution:
            raise ValueError("schedule resolutions must double from stage to stage: "
                             f"{before.resolution} -> {after.resolution}")
    resolution_levels(stages[0].resolution, stages[-1].resolution)  # powers of two
    if start_resolution is not None and stages[0].resolution != start_resolution:
        raise ValueError(f"the schedule starts at {stages[0].resolution} px, the network at {start_resolution}")
    if max_resolution is not None and stages[-1].resolution > max_resolution:
        raise ValueError(f"the schedule reaches {stages[-1].resolution} px, the network only {max_resolution}")
    return stages


def stage_at(stages: list[Stage], step: int) -> tuple[int, float]:
    """(resolution, alpha) of a step; past the schedule's end: the last stage, fully faded in."""
    for stage in stages:
        if step < stage.steps:
            if step < stage.fade:
                return stage.resolution, (step + 1) / (stage.fade + 1)
            return stage.resolution, 1.0
        step -= stage.steps
    return stages[-1].resolution, 1.0


def parse_batch(text: str | int) -> dict[int, int] | int:
    """``16`` (every stage) or ``8:32,16:32,32:16`` (per resolution; others: the last given)."""
    text = str(text).strip()
    if ":" not in text:
        return int(text)
    return {int(r): int(b) for r, b in (item.split(":") for item in text.split(",") if item.strip())}


def batch_size_at(batch: dict[int, int] | int, resolution: int) -> int:
    if isinstance(batch, int):
        return batch
    if resolution in batch:
        return batch[resolution]
    below = [r for r in batch if r <= resolution]
    return batch[max(below)] if below else batch[min(batch)]


# ------------------------------------------------------------------------------------ checkpoints
def export_generator(model: CompletionGenerator, path: Path) -> str:
    """Write the float16 state dict; return its sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_atomically(half_state_dict(model), path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def evaluate(generator: CompletionGenerator, dev_sets, resolution: int, alpha: float, device,
             limit: int = 0) -> dict:
    """Error inside the dev holes, in grey levels (0..255): L1 and PSNR over all hole pixels, for the
    generator and for a trivial baseline (each hole filled with its image's mean known colour)."""
    generator.eval()
    sums = {"abs": 0.0, "sq": 0.0, "n": 0.0, "base_abs": 0.0}
    per_source: dict[str, list[float]] = {}
    for batch in dev_batches(dev_sets, generator.max_resolution, resolution, limit=limit):
        batch = batch.to(device)
        no_attributes = torch.zeros_like(batch.labels)  # dev faces are completed from context alone
        fake = generator(batch.image, batch.hole, no_attributes, resolution, alpha).clamp(-1, 1)
        hole = batch.hole.expand_as(batch.image)
        error = (fake - batch.image) * 127.5 * hole
        known = 1 - batch.hole
        mean_color = (batch.image * known).sum((2, 3), keepdim=True) / known.sum((2, 3), keepdim=True).clamp(min=1)
        baseline = (mean_color - batch.image) * 127.5 * hole
        sums["abs"] += error.abs().sum().item()
        sums["sq"] += error.pow(2).sum().item()
        sums["n"] += hole.sum().item()
        sums["base_abs"] += baseline.abs().sum().item()
        for k, name in enumerate(batch.source):
            entry = per_source.setdefault(name, [0.0, 0.0])
            entry[0] += error[k].abs().sum().item()
            entry[1] += hole[k].sum().item()
    n = max(sums["n"], 1.0)
    mse = sums["sq"] / n
    result = {"dev_l1_hole": round(sums["abs"] / n, 3),
              "dev_psnr_hole": round(10 * math.log10(255.0 ** 2 / max(mse, 1e-10)), 3),
              "dev_l1_hole_meanfill": round(sums["base_abs"] / n, 3)}
    for name, (total, count) in per_source.items():
        result[f"dev_l1_hole_{name}"] = round(total / max(count, 1.0), 3)
    return result


# ------------------------------------------------------------------------------------ training
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="faceedit train completion", description=__doc__.splitlines()[0])
    p.add_argument("--data-celeba", type=Path, help="CelebA folder: images/ + attributes.csv (1/-1)")
    p.add_argument("--data-celebamask", type=Path,
                   help="CelebAMask-HQ folder with train/ (or images/ + masks/); val/ is refused")
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoint, history, best model)")
    p.add_argument("--resume", action="store_true", help=f"continue from OUT/{CHECKPOINT_NAME}")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--steps", type=int, help="total steps (default: the schedule's length)")
    p.add_argument("--schedule", help=f"resolution stages (default {DEFAULTS['schedule']!r})")
    p.add_argument("--batch", help=f"batch size, or per resolution (default {DEFAULTS['batch']!r})")
    p.add_argument("--max-resolution", type=int, help="network resolution (default 128; 256 works too)")
    p.add_argument("--width", type=int, help=f"channels at resolution s = width / s (default {DEFAULT_WIDTH})")
    p.add_argument("--max-channels", type=int,
                   help=f"channel cap at the coarse levels (default {DEFAULT_MAX_CHANNELS})")
    p.add_argument("--lr", type=float)
    p.add_argument("--beta1", type=float)
    p.add_argument("--beta2", type=float)
    for name in ("lambda_adv", "lambda_gp", "drift", "lambda_attr", "lambda_rec", "hole_weight",
                 "lambda_feat", "lambda_boundary", "attribute_dropout", "celebamask_fraction", "ema_decay"):
        p.add_argument("--" + name.replace("_", "-"), type=float, help=f"default {DEFAULTS[name]}")
    p.add_argument("--feature-network", choices=losses.FEATURE_NETWORKS,
                   help=f"network of the feature loss (default {DEFAULTS['feature_network']})")
    p.add_argument("--feature-min-resolution", type=int, help="no feature loss below this stage resolution")
    p.add_argument("--seed", type=int)
    p.add_argument("--dev-celeba", type=int, default=DEV_CELEBA, help="last N CelebA faces held out as dev")
    p.add_argument("--dev-celebamask", type=int, default=DEV_CELEBAMASK, help="last N CelebAMask-HQ pairs held out")
    p.add_argument("--dev-every", type=int, default=500, help="dev evaluation every N steps (and at the end)")
    p.add_argument("--dev-limit", type=int, default=0, help="evaluate only N dev faces (0 = all)")
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--cache", default="/tmp", help="folder for the decoded-data cache ('' = none)")
    p.add_argument("--max-minutes", type=float, default=0, help="checkpoint and stop after this wall time")
    p.add_argument("--export", type=Path, help="write the float16 generator (for shipping) here at the end")
    p.add_argument("--export-from", choices=("last", "best"), default="last",
                   help="export the last EMA generator or the best dev one (generator_best.pt)")
    return p


def resolve_config(args: argparse.Namespace, saved: dict | None) -> dict:
    config = {}
    for key, default in DEFAULTS.items():
        given = getattr(args, key, None)
        config[key] = given if given is not None else (saved or {}).get(key, default)
    if saved:
        for key in ("max_resolution", "width", "max_channels"):
            if config[key] != saved[key]:
                raise SystemExit(f"--{key.replace('_', '-')} {config[key]} differs from the checkpoint's {saved[key]}")
    return config


def _step_generators(seed: int, step: int) -> tuple[np.random.Generator, torch.Generator]:
    """Every random draw of a step comes from these, so a resumed run repeats it exactly."""
    torch_gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return np.random.default_rng([seed, step]), torch_gen


def condition_vector(batch: Batch, dropout: float, rng: np.random.Generator) -> torch.Tensor:
    """Known labels as +-1, with random entries (and now and then whole vectors) set to 0 =
    "not specified", so the generator learns to complete with any subset of attributes given."""
    keep = rng.random(batch.labels.shape) >= dropout
    keep &= (rng.random((batch.labels.shape[0], 1)) >= 0.1)
    keep = torch.from_numpy(keep).to(batch.known.device)
    return (2 * batch.labels - 1) * batch.known * keep


def update_ema(ema: CompletionGenerator, model: CompletionGenerator, decay: float, step: int) -> None:
    """Moving average of G's weights; the decay ramps up over the first steps (as in TensorFlow's
    ExponentialMovingAverage with num_updates) so early dev evaluations are not of the random init."""
    decay = min(decay, (1.0 + step) / (10.0 + step))
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1.0 - decay)


def train_step(G, D, g_opt, d_opt, feature_net, batch: Batch, condition: torch.Tensor, mix: torch.Tensor,
               resolution: int, alpha: float, config: dict) -> dict[str, float]:
    stage = {"resolution": resolution, "alpha": alpha}
    image, hole = batch.image, batch.hole
    # Critic: real faces vs completed ones; gradient penalty; classify the real faces' attributes.
    with torch.no_grad():
        completed = composite(image, G(image, hole, condition, **stage), hole)
    real_score, real_logits = D(image, **stage)
    fake_score, _ = D(completed, **stage)
    d_adv = losses.critic_loss(real_score, fake_score)
    d_gp = losses.gradient_penalty(D, image, completed, mix, **stage)
    d_attr = losses.attribute_loss(real_logits, batch.labels, batch.known)
    d_loss = (d_adv + config["lambda_gp"] * d_gp + config["drift"] * losses.drift_penalty(real_score)
              + config["lambda_attr"] * d_attr)
    d_opt.zero_grad(set_to_none=True)
    d_loss.backward()
    d_opt.step()

    # Generator: fool the critic, show the known attributes, reconstruct, match features, no seams.
    D.requires_grad_(False)
    generated = G(image, hole, condition, **stage)
    completed = composite(image, generated, hole)
    fake_score, fake_logits = D(completed, **stage)
    D.requires_grad_(True)
    g_adv = losses.generator_adversarial_loss(fake_score)
    g_attr = losses.attribute_loss(fake_logits, batch.labels, batch.known)
    g_rec = losses.reconstruction_loss(generated, image, hole, config["hole_weight"])
    use_features = feature_net is not None and resolution >= config["feature_min_resolution"]
    g_feat = losses.feature_loss(feature_net if use_features else None, completed, image)
    g_bdy = losses.boundary_loss(completed, image, hole)
    g_loss = (config["lambda_adv"] * g_adv + config["lambda_attr"] * g_attr + config["lambda_rec"] * g_rec
              + config["lambda_feat"] * g_feat + config["lambda_boundary"] * g_bdy)
    g_opt.zero_grad(set_to_none=True)
    g_loss.backward()
    g_opt.step()
    values = {"D/adv": d_adv, "D/gp": d_gp, "D/attr": d_attr, "G/adv": g_adv, "G/attr": g_attr,
              "G/rec": g_rec, "G/feat": g_feat, "G/boundary": g_bdy, "G/total": g_loss}
    out = {k: float(v.detach()) for k, v in values.items()}
    if not all(math.isfinite(v) for v in out.values()):
        raise FloatingPointError(f"non-finite loss at {resolution} px: {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(max(1, args.threads))
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out / CHECKPOINT_NAME

    saved = None
    if args.resume:
        if not checkpoint_path.is_file():
            print(f"--resume: no checkpoint at {checkpoint_path}", file=sys.stderr)
            return 2
        try:
            saved = read_training_checkpoint(checkpoint_path, "cpu")
        except CheckpointError as exc:  # refused before anything in the file runs
            print(f"--resume: {exc}", file=sys.stderr)
            return 2
    config = resolve_config(args, saved["config"] if saved else None)
    stages = parse_schedule(config["schedule"], max_resolution=config["max_resolution"])
    batch_sizes = parse_batch(config["batch"])
    total_steps = args.steps if args.steps is not None else sum(s.steps for s in stages)

    cache = Path(args.cache) if args.cache else None
    train_sets, dev_sets = load_sources(args.data_celeba, args.data_celebamask, cache,
                                        args.dev_celeba, args.dev_celebamask)

    torch.manual_seed(config["seed"])
    architecture = dict(max_resolution=config["max_resolution"], start_resolution=stages[0].resolution,
                        width=config["width"], max_channels=config["max_channels"])
    G = CompletionGenerator(**architecture).to(device)
    G_ema = CompletionGenerator(**architecture).to(device)
    G_ema.load_state_dict(G.state_dict())
    G_ema.requires_grad_(False)
    D = CompletionDiscriminator(**architecture).to(device)
    betas = (float(config["beta1"]), float(config["beta2"]))  # torch refuses a mix of int and float
    g_opt = torch.optim.Adam(G.parameters(), float(config["lr"]), betas, eps=1e-8)
    d_opt = torch.optim.Adam(D.parameters(), float(config["lr"]), betas, eps=1e-8)
    feature_net = losses.feature_network(config["feature_network"])
    if feature_net is not None:
        feature_net = feature_net.to(device)

    step, best, records = 0, float("inf"), []
    history_path = out / HISTORY_NAME
    if saved:
        try:
            G.load_state_dict(saved["generator"])
            G_ema.load_state_dict(saved["generator_ema"])
            D.load_state_dict(saved["discriminator"])
            g_opt.load_state_dict(saved["g_optimizer"])
            d_opt.load_state_dict(saved["d_optimizer"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{checkpoint_path} does not match this network: {exc}") from None
        step, best = int(saved["step"]), float(saved["best_dev_l1"])
        if parse_schedule(saved["config"]["schedule"])[-1].resolution != stages[-1].resolution:
            best = float("inf")  # the schedule now ends elsewhere: a best at the old end is no measure here
        torch.set_rng_state(saved["torch_rng"])
        if device.type == "cuda" and saved.get("cuda_rng"):
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        if history_path.is_file():  # drop what was logged after the checkpoint (a crash, a stop)
            records = [r for r in json.loads(history_path.read_text())["records"] if r["step"] <= step]
        resolution, alpha = stage_at(stages, step)
        print(f"resumed at step {step} ({resolution} px, alpha {alpha:.3f})", flush=True)

    print(f"generator {n_parameters(G):,} parameters, discriminator {n_parameters(D):,}; "
          f"{', '.join(f'{s.name} {len(s)}' for s in train_sets)} training faces, "
          f"{sum(len(s) for s in dev_sets)} dev; steps {step} -> {total_steps} on {device}", flush=True)
    history_config = {**config, "architecture": G.config(), "data_celeba": str(args.data_celeba),
                      "data_celebamask": str(args.data_celebamask)}

    def save(step: int) -> None:
        resolution, alpha = stage_at(stages, max(step - 1, 0))
        save_atomically({
            "generator": G.state_dict(), "generator_ema": G_ema.state_dict(), "discriminator": D.state_dict(),
            "g_optimizer": g_opt.state_dict(), "d_optimizer": d_opt.state_dict(),
            "step": step, "resolution": resolution, "alpha": alpha, "best_dev_l1": best,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
            "config": config,
        }, checkpoint_path)

    def dev_record(step: int) -> dict:
        nonlocal best
        resolution, alpha = stage_at(stages, max(step - 1, 0))
        record = {"step": step, "kind": "dev", "resolution": resolution, "alpha": round(alpha, 4),
                  **evaluate(G_ema, dev_sets, resolution, alpha, device, args.dev_limit)}
        final_stage = resolution == stages[-1].resolution and alpha == 1.0
        if final_stage and record["dev_l1_hole"] < best:
            best = record["dev_l1_hole"]
            export_generator(G_ema, out / BEST_NAME)
            record["best"] = True
        print("dev", json.dumps(record), flush=True)
        return record

    leg = TrainingLeg(args, total_steps, records, history_path, history_config, save,
                      dev_record if dev_sets else None)
    G.train()
    D.train()
    while step < total_steps:
        resolution, alpha = stage_at(stages, step)
        G.set_stage(resolution, alpha)
        G_ema.set_stage(resolution, alpha)
        rng, torch_gen = _step_generators(config["seed"], step)
        batch_size = batch_size_at(batch_sizes, resolution)
        batch = sample_batch(rng, train_sets, batch_size, G.max_resolution, resolution,
                             config["celebamask_fraction"])
        condition = condition_vector(batch, config["attribute_dropout"], rng)
        mix = torch.rand(batch_size, 1, 1, 1, generator=torch_gen)
        batch, condition, mix = batch.to(device), condition.to(device), mix.to(device)
        values = train_step(G, D, g_opt, d_opt, feature_net, batch, condition, mix, resolution, alpha, config)
        update_ema(G_ema, G, config["ema_decay"], step)
        step += 1
        leg.add(values)
        if leg.end_of_step(step, resolution=resolution, alpha=round(alpha, 4), batch=batch_size):
            break
    leg.finish(step, checkpoint_path)

    if args.export:
        source = G_ema
        if args.export_from == "best":
            if not (out / BEST_NAME).is_file():
                print(f"--export-from best: no {BEST_NAME} yet in {out}", file=sys.stderr)
                return 2
            source = CompletionGenerator(**architecture)
            source.load_state_dict(read_training_checkpoint(out / BEST_NAME))
        print("exported", args.export, "sha256", export_generator(source, args.export), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
