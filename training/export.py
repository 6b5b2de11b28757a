"""Export a trained run into a model folder (safetensors weights + card), then calibrate it.

``python -m training export runs/NAME`` writes ``src/napari_brainuad/weights/NAME/`` by default:
the network's tensors as safetensors and a card with the recipe, how it was trained (command,
steps, wall time, machine) and the training data's attribution; then sets the default threshold
from the healthy ``val`` split (see ``calibrate``; a recipe's ``"calibration": {"normative_train": true}``
is ``--normative-train``). The folder is assembled and calibrated inside
the run folder and moved into place only when complete, so a model list never sees half an export.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from napari_brainuad.io import atomic_write
from napari_brainuad.models import ModelError, write_card
from napari_brainuad.models.families import build_network, learned_family
from napari_brainuad.models.registry import bundled_folder
from napari_brainuad.template import MNI_NAME, MNI_SHAPE

from .calibrate import add_calibration_arguments, calibrate_folder, calibration_options
from .data import SITES
from .fit import CHECKPOINT

RECIPES = Path(__file__).parent / "recipes"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run folder written by 'fit'")
    p.add_argument("--to", type=Path, help="model folder (default: the plugin's bundled weights/NAME)")
    add_calibration_arguments(p)
    p.add_argument("--recipe", type=Path,
                   help="export the run's network under another recipe's card (name, family, inference and scoring "
                        "settings), e.g. an 'ldm' run as 'ldm-tavg'; the networks must match")


def main(args) -> int:
    recipe = json.loads((args.run / "recipe.json").read_text())
    saved = torch.load(args.run / CHECKPOINT, map_location="cpu", weights_only=True)
    trained_as = None
    if getattr(args, "recipe", None):
        trained_as, recipe = recipe, as_recipe(recipe, json.loads(Path(args.recipe).read_text()), saved["network"])
    final = Path(args.to or bundled_folder() / recipe["name"])
    folder = Path(args.run) / ".export"  # staged: the model folder appears only once calibrated
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    dtype = getattr(torch, recipe.get("weights_dtype", "float32"))  # float16 halves large files
    frozen = learned_family(recipe["family"]).frozen_prefixes  # a loaded first stage is stored as loaded
    tensors = {k: (v.to(dtype) if v.is_floating_point() and not k.startswith(frozen) else v).contiguous()
               for k, v in saved["network"].items()}
    atomic_write(folder / "weights.safetensors", lambda tmp: save_file(tensors, tmp))
    cfg = recipe["training"]
    cache_folder = cfg.get("cache", "cache")  # a recipe whose pseudo-pathology is not the default names its cache
    card = {
        "name": recipe["name"], "family": recipe["family"], "description": recipe["description"],
        "modality": recipe.get("modality", "T1"), **({"contrasts": recipe["contrasts"]} if "contrasts" in recipe else {}),
        "spatial_dims": 2, "template": MNI_NAME, "grid_shape": list(MNI_SHAPE), "spacing_mm": 2.0,
        "normalisation": "percentiles 0.5-99.5 inside the brain mask mapped to [0, 1], clipped",
        "architecture": recipe["architecture"], "weights": "weights.safetensors", "scoring": recipe["scoring"],
        "threshold": 0.0, "t_int": recipe.get("t_int"),
        "training": {"data": training_data(cfg.get("sites", []), saved.get("train_scans", {})),
                     "recipe": recipe_file(recipe["name"]),
                     "command": f"python -m training fit {recipe_file(recipe['name'])} --data "
                                + " ".join(f"{cache_folder}/{s}" for s in cfg.get("sites", []))
                                + f" --out runs/{recipe['name']}",
                     **({"prepare": f"python -m training prepare --data ../shared/data --cache {cache_folder} "
                                    "--pseudo-per-scan 8 --blob-fraction " + " ".join(map(str, cfg["blob_fraction"]))}
                        if "blob_fraction" in cfg else {}),
                     "steps": int(saved["step"]), "batch_size": cfg["batch_size"], "seed": cfg["seed"],
                     "wall_time_s": round(float(saved["seconds"]), 1), "machine": saved["machine"],
                     "parameters": int(sum(v.numel() for v in tensors.values())), "weights_dtype": str(dtype)[6:],
                     **({"init": f"fine-tuned from the weights of {cfg['init']}"} if cfg.get("init") else {})},
        "metrics": {},
    }
    if trained_as is not None:
        card["training"]["trained_as"] = (f"{trained_as['name']} ({trained_as['family']}): the network of that run, "
                                          f"exported under this recipe's card without training of its own")
        card["training"]["command"] = card["training"]["command"].replace(
            recipe_file(recipe["name"]), recipe_file(trained_as["name"])).replace(
            f"runs/{recipe['name']}", f"runs/{trained_as['name']}")
    write_card(folder, card)
    options = calibration_options(args)
    options["normative_train"] |= recipe.get("calibration", {}).get("normative_train", False)
    calibrate_folder(folder, args.cache, **options)
    publish(folder, final)
    print(f"exported {recipe['name']} -> {final}")
    return 0


def recipe_file(name: str) -> str:
    """The recipe named ``name`` as a path from the repository root: ``training/recipes/NAME.json``, or where it
    lives below that folder (``experiments/``) when only there."""
    found = sorted(RECIPES.rglob(f"{name}.json"), key=lambda p: len(p.parts))
    return (found[0] if found else RECIPES / f"{name}.json").relative_to(RECIPES.parent.parent).as_posix()


def publish(staged: Path, final: Path) -> None:
    """Move a finished model folder into place, replacing any previous one (the old one is removed last)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    shutil.move(str(staged), str(final))
    shutil.rmtree(old, ignore_errors=True)


def as_recipe(trained: dict, other: dict, state: dict) -> dict:
    """``other`` (a recipe whose family reuses the trained network) with the trained run's training
    settings; :class:`ModelError` unless the run's weights load into ``other``'s network."""
    network = build_network(other["family"], other["architecture"])
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError:
        raise ModelError(f"recipe {other['name']}: its '{other['family']}' network does not match the run's "
                         f"'{trained['family']}' weights.") from None
    return {**other, "training": dict(trained["training"])}


def training_data(sites: list[str], scans: dict[str, int]) -> str:
    """Attribution of the training scans, site by site, with each site's licence."""
    parts = []
    for name in sites:
        site = SITES.get(name)
        count = f"{scans[name]} " if name in scans else ""
        parts.append(f"{name} train split: {count}scans, {site.description}; {site.licence}" if site else
                     f"{name}: {count}healthy scans from cache '{name}'")
    return " + ".join(parts) or "unknown"
