"""One registry of models: bundled folders under ``napari_brainuad/weights`` or a user's own folder.

A model folder holds ``card.json`` (validated against the card schema) and, for learned
families, ``weights.safetensors``. Nothing is ever unpickled.
"""
from __future__ import annotations

import difflib
import re
from importlib.resources import files
from pathlib import Path

import torch

from .base import AnomalyModel
from .card import ModelCard, ModelError, read_card
from .families import FAMILIES


def bundled_folder() -> Path:
    return Path(str(files("napari_brainuad") / "weights"))


def available_models() -> list[ModelCard]:
    """Cards of the bundled models, sorted by name."""
    folders = sorted(p.parent for p in bundled_folder().glob("*/card.json"))
    return [read_card(folder) for folder in folders]


def model_names() -> list[str]:
    return [card.name for card in available_models()]


def find_card(name_or_path: str | Path) -> ModelCard:
    """The card of a bundled model by name, or of a model folder given by path."""
    path = Path(name_or_path)
    if path.is_dir():
        return read_card(path)
    cards = available_models()
    for card in cards:
        if card.name == str(name_or_path):
            return card
    names = [card.name for card in cards]
    close = difflib.get_close_matches(str(name_or_path), names, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise ModelError(f"{name_or_path}: no such model ({hint}bundled: {', '.join(names)}; or give a model folder).")


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is present, else ``"cpu"``; ``"cpu"`` and ``"cuda[:N]"`` are checked."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if device != "cpu" and match is None:
        raise ModelError(f"device {device}: not a device this plugin runs on (use auto, cpu, cuda or cuda:N).")
    if match and not torch.cuda.is_available():
        raise ModelError(f"device {device}: no CUDA GPU is available here; use --device cpu or auto.")
    if match and match.group(1) is not None and int(match.group(1)) >= torch.cuda.device_count():
        raise ModelError(f"device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                         f"numbered from 0.")
    return device


def load_model(name_or_path: str | Path, device: str = "auto") -> AnomalyModel:
    """Build the model named by a card, load its safetensors weights, move it to ``device``."""
    card = find_card(name_or_path)
    family = FAMILIES.get(card.family)
    if family is None:
        raise ModelError(f"{card.folder}: unknown model family '{card.family}' (known: {', '.join(FAMILIES)}).")
    device = resolve_device(device)
    try:
        return family(card, device)
    except ModelError:
        raise
    except Exception as exc:  # a stranger's card may still fail in the network library or run out of memory
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{card.folder}: model '{card.name}' cannot be built ({text[:160].rstrip('.')}).") from None
