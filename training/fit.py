"""Train a recipe on cached healthy slices: ``python -m training fit RECIPE --data CACHE --out RUN``.

Checkpoints every few minutes or ``--checkpoint-steps`` (atomically), ``--resume`` continues after
a kill, and each step's randomness is derived from (seed, step, rank), so an interrupted and resumed
run ends with the same weights as an uninterrupted one. Data-parallel under ``torchrun`` (gloo on CPU, NCCL on GPU).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import time
from pathlib import Path

import torch
from tqdm import tqdm

from napari_brainuad.io import atomic_write, remove_stale_temporaries
from napari_brainuad.models import ModelError, read_card, resolve_device
from napari_brainuad.models.families import learned_family

from .data import SliceData

CHECKPOINT = "checkpoint.pt"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", type=Path, help="recipe JSON (training/recipes/*.json)")
    p.add_argument("--data", type=Path, nargs="+", default=[Path("cache/ixi"), Path("cache/oasis")],
                   help="site caches made by 'prepare' (their train splits)")
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoint, loss log, recipe copy)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    p.add_argument("--steps", type=int, help="override the recipe's number of steps")
    p.add_argument("--checkpoint-steps", type=int, help="also checkpoint every this many steps")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


def main(args) -> int:
    recipe = json.loads(Path(args.recipe).read_text())
    if args.steps:
        recipe["training"]["steps"] = args.steps
    if args.checkpoint_steps:
        recipe["training"]["checkpoint_steps"] = args.checkpoint_steps
    rank, world = _init_distributed(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device) if world == 1 or not torch.cuda.is_available() else f"cuda:{rank}"
    out = Path(args.out)
    recipe["training"]["sites"] = [Path(c).name for c in args.data]
    if "synth_prob" in recipe["training"]:  # contrasts rendered from label maps on the fly (anatomy-any, restore-any)
        from .synth import SynthData

        if recipe["training"].get("balance_sites"):
            raise ValueError(f"{args.recipe}: 'balance_sites' is not implemented for synthetic-contrast recipes "
                             "('synth_prob'); remove one of the two.")

        data = SynthData.from_cache(args.data, "train", recipe["training"]["synth_prob"],
                                    lesion_fraction=recipe["training"].get("lesion_fraction"))
    else:
        data = SliceData.from_cache(args.data, "train", pseudo=recipe["training"].get("pseudo_prob", 0) > 0,
                                    balance_sites=recipe["training"].get("balance_sites", False),
                                    blob_fraction=recipe["training"].get("blob_fraction"))
    state = fit(recipe, data, out, device, args.resume, rank, world)
    if rank == 0:
        print(f"{recipe['name']}: {state['step']} steps, final loss {state['loss']:.5f}, "
              f"{state['seconds']:.0f} s -> {out / CHECKPOINT}")
    if world > 1:
        torch.distributed.destroy_process_group()
    return 0


def _init_distributed(device: str) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        backend = "nccl" if device != "cpu" and torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
        return torch.distributed.get_rank(), world
    return 0, 1


def fit(recipe: dict, data: "SliceData", out: Path, device: str = "cpu", resume: bool = False,
        rank: int = 0, world: int = 1) -> dict:
    """Train ``recipe`` on ``data``; returns the final state (step, loss, seconds)."""
    cfg = recipe["training"]
    torch.manual_seed(cfg["seed"])
    family = learned_family(recipe["family"])
    network = family.build_network(recipe["architecture"])
    family.init_training(network, recipe, data)
    if cfg.get("init"):  # fine-tuning: start from a trained model folder of this family and architecture
        _load_initial_weights(network, family, Path(cfg["init"]))
    network = network.to(device)
    optimizer = torch.optim.Adam([p for p in network.parameters() if p.requires_grad], lr=cfg["lr"])
    loss_fn = family.objective(recipe, device)
    parallel = (lambda m: torch.nn.parallel.DistributedDataParallel(m)) if world > 1 else (lambda m: m)
    trainer = family.train_step(recipe, device, parallel)  # a family's own step (e.g. a GAN's two optimizers)
    step, seconds = 0, 0.0
    ckpt = out / CHECKPOINT
    if rank == 0 and out.exists():
        remove_stale_temporaries(out, [CHECKPOINT])  # left by a kill during a checkpoint write
    if resume and ckpt.exists():
        saved = torch.load(ckpt, map_location=device, weights_only=True)
        network.load_state_dict(saved["network"])
        optimizer.load_state_dict(saved["optimizer"])
        if trainer is not None:
            trainer.load_state_dict(saved["train_step"])
        step, seconds = int(saved["step"]), float(saved["seconds"])
    elif rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "recipe.json").write_text(json.dumps(recipe, indent=2))
        (out / "loss.csv").write_text("step,loss,seconds\n")
    model = parallel(network)
    model.train()
    total = cfg["steps"]
    every = cfg.get("checkpoint_minutes", 3) * 60
    every_steps = cfg.get("checkpoint_steps") or total
    start, last_save, loss = time.perf_counter() - seconds, time.perf_counter(), float("nan")
    bar = tqdm(total=total, initial=step, desc=recipe["name"], disable=rank != 0)
    log = []
    while step < total:
        if "lr_min" in cfg:  # cosine decay from lr to lr_min over the run, a function of the step alone
            for group in optimizer.param_groups:
                group["lr"] = cfg["lr_min"] + 0.5 * (cfg["lr"] - cfg["lr_min"]) * (1 + math.cos(math.pi * step / total))
        generator = torch.Generator().manual_seed(cfg["seed"] * 1_000_003 + step * 101 + rank)
        batch = data.batch(cfg["batch_size"], generator, augment=cfg.get("augment", True),
                           robust=cfg.get("robust", False), context=recipe["architecture"].get("context", 0),
                           pseudo_prob=cfg.get("pseudo_prob", 0.0)).to(device)
        if trainer is not None:
            loss_value = trainer(model, batch, generator, optimizer, step)
        else:
            loss_value = loss_fn(model, batch, generator)
            optimizer.zero_grad(set_to_none=True)
            loss_value.backward()
            if cfg.get("grad_clip"):  # bounds the step a rare extreme batch can take
                torch.nn.utils.clip_grad_norm_(network.parameters(), cfg["grad_clip"])
            optimizer.step()
        step += 1
        loss = float(loss_value.detach())
        log.append((step, loss, time.perf_counter() - start))
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        if rank == 0 and (time.perf_counter() - last_save > every or step % every_steps == 0 or step == total):
            _save(ckpt, network, optimizer, step, time.perf_counter() - start, log, out, data.n_volumes, trainer)
            last_save, log = time.perf_counter(), []
    bar.close()
    return {"step": step, "loss": loss, "seconds": time.perf_counter() - start}


def _load_initial_weights(network, family, folder: Path) -> None:
    """Load the weights of the model ``folder`` (a recipe's ``training.init``) into ``network``."""
    card = read_card(folder)
    if card.family != family.family:
        raise ModelError(f"{folder}: 'init' must be a '{family.family}' model, not '{card.family}'.")
    try:
        network.load_state_dict(family.load_network(card).state_dict())
    except RuntimeError:
        raise ModelError(f"{folder}: its network does not match the recipe's architecture.") from None


def _save(path: Path, network, optimizer, step: int, seconds: float, log: list, out: Path,
          train_scans: dict, trainer=None) -> None:
    """Checkpoint atomically, then append the loss log (the log never runs ahead of the checkpoint)."""
    state = {"network": network.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "seconds": seconds,
             "train_scans": train_scans,
             "machine": f"{platform.machine()} {platform.system()}, torch {torch.__version__}"}
    if trainer is not None:  # a family's training-only modules and optimizers (e.g. a discriminator)
        state["train_step"] = trainer.state_dict()
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    with open(out / "loss.csv", "a", newline="") as f:
        csv.writer(f).writerows((s, f"{l:.6f}", f"{t:.1f}") for s, l, t in log)
