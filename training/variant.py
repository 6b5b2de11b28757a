"""Copy a model with another card's (or a given) scoring or diffusion schedule, calibrate the copy: ablations.

A variant shares the source model's weights and changes only how its reconstruction is scored (or, with
``--t-int``, the DDIM stride and noise levels of a diffusion model's inference), so comparing it with the
source separates what the network does from what its scoring or sampling does. Issue 12's
question ("why is pcldm-t1 not ahead of vae-t1 on real lesions?") is answered by scoring each with
the other's switches::

    python -m training variant vae-t1 --scoring-of pcldm-t1 --out runs/variants/vae-t1-eq8
    python -m training variant pcldm-t1 --scoring-of vae-t1 --out runs/variants/pcldm-t1-normative
    python -m training evaluate --models runs/variants/vae-t1-eq8 runs/variants/pcldm-t1-normative ... \\
        --no-card-update --out benchmarks/scoring-swap

A coarser DDIM stride is a speed question (``--t-int '{"steps": 50, "min": 50, "max": 450}'`` halves the
denoising steps at every ``T_int``). The copy gets the name of its ``--out`` folder, its ``t_int`` with
``--t-int`` on top, the scoring (``--scoring-of``'s whole, else the source's,
then ``--scoring`` JSON on top), a note in its description and metrics, and a threshold (and normative statistics, when
its scoring is normative) from :func:`training.calibrate.calibrate_folder` on the same caches.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from napari_brainuad.models import find_card, write_card
from napari_brainuad.models.card import CARD_FILE, validate_card

from .calibrate import add_calibration_arguments, calibrate_folder, calibration_options


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="bundled model name or model folder to copy")
    p.add_argument("--out", type=Path, required=True, help="new model folder (must not exist); names the copy")
    p.add_argument("--scoring-of", help="take the scoring switches of this model (name or folder)")
    p.add_argument("--scoring", type=json.loads, default={},
                   help='scoring switches as JSON on top, e.g. \'{"normative": true}\'')
    p.add_argument("--t-int", type=json.loads, default={},
                   help='diffusion noise levels as JSON on top of the card\'s t_int, e.g. \'{"steps": 50, "min": 50, '
                        '"max": 450}\' (a DDIM stride of 50)')
    add_calibration_arguments(p)


def make_variant(model_ref, out: Path, scoring_of=None, scoring: dict | None = None,
                 t_int: dict | None = None) -> Path:
    """Copy the model folder to ``out`` (weights included) with the new scoring and ``t_int``; return ``out``.

    The copy's card is validated before anything is written; ``out`` must not exist.
    """
    card = find_card(model_ref)
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: already exists; a variant is written into a new folder.")
    other = find_card(scoring_of) if scoring_of else None
    new = {**(other.scoring if other else card.scoring), **(scoring or {})}
    changes = ", ".join(f"{k} {v}" for k, v in (scoring or {}).items())
    note = (f"the scoring of {other.name}" if other else "its own scoring") + (f", then {changes}" if changes else "")
    data = {key: value for key, value in card.data.items() if key != "normative"}
    variant = {"of": card.name, "scoring": note}
    if t_int:
        if not card.is_diffusion:
            raise ValueError(f"{card.folder}: {card.name} has no diffusion noise level; --t-int applies to "
                             "diffusion models only.")
        data["t_int"] = variant["t_int"] = {**card.data["t_int"], **t_int}
        note += ", T_int " + ", ".join(f"{k} {v}" for k, v in t_int.items())
    data.update(name=out.name, scoring=new, metrics={"variant": variant},
                description=f"Variant of {card.name} (same weights) with {note}. "
                f"{card.data.get('description', '')}")
    validate_card(data, out / CARD_FILE)
    out.mkdir(parents=True)
    try:
        if card.weights_path is not None:
            shutil.copy2(card.weights_path, out / card.weights_path.name)
        write_card(out, data)
    except Exception:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return out


def main(args) -> int:
    out = make_variant(args.model, args.out, args.scoring_of, args.scoring, args.t_int)
    result = calibrate_folder(out, args.cache, **calibration_options(args))
    print(json.dumps({"model": str(out), **result}, indent=2))
    return 0
