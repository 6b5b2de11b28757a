"""Model cards: the JSON that describes a model, validated against a schema before use."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import jsonschema

CARD_FILE = "card.json"
WEIGHTS_FILE = "weights.safetensors"
NORMATIVE_FILE = "normative.safetensors"
"""Healthy residual statistics for normative scoring (written by ``python -m training calibrate``)."""

SCHEMA = {
    "type": "object",
    "required": ["name", "family", "modality", "spatial_dims", "template", "grid_shape", "spacing_mm",
                 "normalisation", "architecture", "scoring", "threshold", "training", "metrics"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"},
        "family": {"type": "string"},
        "description": {"type": "string"},
        "modality": {"enum": ["T1", "T2", "FLAIR", "any"]},
        "spatial_dims": {"enum": [2, 3]},
        "template": {"type": "string"},
        "grid_shape": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 3, "maxItems": 3},
        "spacing_mm": {"type": "number", "exclusiveMinimum": 0},
        "normalisation": {"type": "string"},
        "architecture": {"type": "object"},
        "weights": {"type": ["string", "null"], "pattern": r"^[A-Za-z0-9_.-]+\.safetensors$"},
        "normative": {"type": ["string", "null"], "pattern": r"^[A-Za-z0-9_.-]+\.safetensors$"},
        "scoring": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "shift": {"type": "integer", "minimum": 0, "maximum": 4},
                "minmax": {"type": "boolean"},
                "median_size": {"type": "integer", "minimum": 0, "maximum": 11},
                "erode": {"type": "integer", "minimum": 0, "maximum": 10},
                "lpips": {"type": "boolean"},
                "normative": {"type": "boolean"},
            },
        },
        "threshold": {"type": "number"},
        "t_int": {
            "type": ["object", "null"],
            "required": ["default", "min", "max"],
            "properties": {k: {"type": "integer", "minimum": 0} for k in ("default", "min", "max", "steps")},
        },
        "training": {"type": "object"},
        "metrics": {"type": "object"},
    },
}


class ModelError(ValueError):
    """A model folder that cannot be used; ``str(error)`` names the file and the problem."""


@dataclass(frozen=True)
class ModelCard:
    """A validated model card plus the folder it came from."""

    data: dict
    folder: Path | None = None

    def __getattr__(self, key):
        try:
            return self.data[key]
        except KeyError:
            raise AttributeError(key) from None

    @property
    def is_diffusion(self) -> bool:
        return self.data.get("t_int") is not None

    @property
    def weights_path(self) -> Path | None:
        weights = self.data.get("weights")
        return None if weights is None or self.folder is None else self.folder / weights

    @property
    def normative_path(self) -> Path | None:
        """The normative statistics file (needed when ``scoring.normative`` is on), if the card names one."""
        normative = self.data.get("normative")
        return None if normative is None or self.folder is None else self.folder / normative

    def summary(self) -> str:
        """One line for lists and tooltips: family, modality, scoring, training data, key figures."""
        metrics = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in self.data.get("metrics", {}).get("summary", {}).items())
        data = self.data.get("training", {}).get("data", "no training data")
        scoring = "normative scoring" if self.data.get("scoring", {}).get("normative") else "residual scoring"
        return f"{self.family} ({self.spatial_dims}D, {self.modality}, {scoring}); trained on: {data}" + (
            f"; {metrics}" if metrics else "")


def validate_card(data: object, source: object = "card") -> ModelCard:
    """Check card data against :data:`SCHEMA`; raise :class:`ModelError` naming ``source``."""
    try:
        jsonschema.validate(data, SCHEMA)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "card"
        raise ModelError(f"{source}: invalid model card at '{where}': {exc.message}.") from None
    if data.get("t_int") is not None and not data["t_int"]["min"] <= data["t_int"]["default"] <= data["t_int"]["max"]:
        raise ModelError(f"{source}: invalid model card: t_int default lies outside [min, max].")
    return ModelCard(data)


def read_card(folder: Path) -> ModelCard:
    """Read and validate ``folder/card.json``."""
    path = Path(folder) / CARD_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: no model card here (a model folder holds {CARD_FILE} and its weights).") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: model card is not readable JSON ({exc}).") from None
    card = validate_card(data, path)
    return ModelCard(card.data, Path(folder))


def write_card(folder: Path, data: dict) -> Path:
    """Validate and write a card as ``folder/card.json``."""
    validate_card(data, Path(folder) / CARD_FILE)
    path = Path(folder) / CARD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path
