"""Model cards: the JSON that describes a model, validated against a schema before use."""
from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import jsonschema

from ..scoring import POLARITIES, POLARITY_WORDS

CARD_FILE = "card.json"
WEIGHTS_FILE = "weights.safetensors"
NORMATIVE_FILE = "normative.safetensors"
"""Healthy residual statistics for normative scoring (written by ``python -m training calibrate``)."""
MAX_CARD_BYTES = 1 << 20
"""Largest ``card.json`` read (cards are a few kB)."""
MAX_WEIGHTS_BYTES = 2 << 30
"""Largest weights or statistics file read (the bundled ones are under 10 MB)."""
MAX_JSON_DEPTH = 32
CONTRASTS = ("T1", "T2", "FLAIR", "PD", "DWI")
"""Contrasts a card may name in ``contrasts`` (the scans a model accepts)."""


def _int(low: int, high: int) -> dict:
    return {"type": "integer", "minimum": low, "maximum": high}


def _ints(low: int, high: int, min_items: int = 1, max_items: int = 8) -> dict:
    return {"type": "array", "items": _int(low, high), "minItems": min_items, "maxItems": max_items}


DIFFUSION_FAMILIES = ("ddpm", "ldm", "ldm-tavg", "cldm", "pcldm")
"""Families whose cards must give ``t_int`` and a ``scheduler``."""

ARCHITECTURE = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "polarity": {"enum": ["bright", "dark"]},
        "slice_shape": _ints(8, 1024, 2, 2),
        "context": _int(0, 8),
        "channels": _ints(1, 512),
        "strides": _ints(1, 4),
        "num_res_units": _int(0, 8),
        "latent_size": _int(1, 4096),
        "attention_levels": {"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 8},
        "num_res_blocks": {"anyOf": [_int(1, 8), _ints(1, 8)]},
        "num_head_channels": {"anyOf": [_int(1, 512), _ints(1, 512)]},
        "norm_groups": _int(1, 512),
        "inference_batch": _int(1, 1024),
        "num_res_layers": _int(0, 8),
        "num_res_channels": _ints(1, 512),
        "num_embeddings": _int(2, 4096),
        "embedding_dim": _int(1, 512),
        "attn_layers_dim": _int(8, 1024),
        "attn_layers_depth": _int(1, 24),
        "attn_layers_heads": _int(1, 32),
        "resample_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 0.5},
        "patch_size": _ints(2, 64, 2, 2),
        "hidden_size": _int(8, 1024),
        "mlp_dim": _int(8, 4096),
        "num_layers": _int(1, 24),
        "num_heads": _int(1, 32),
        "decoder_hidden_size": _int(8, 1024),
        "decoder_mlp_dim": _int(8, 4096),
        "decoder_num_layers": _int(1, 24),
        "decoder_num_heads": _int(1, 32),
        "masking_ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "masks": _int(1, 64),
        "classes": _int(3, 32),
        "restore_channels": _ints(1, 512),
        "refine_channels": _int(1, 256),
        "edges": {"enum": ["sobel", "laplace"]},
        "ae_channels": _ints(1, 512, 1, 6),
        "ae_num_res_blocks": _int(1, 4),
        "ae_norm_groups": _int(1, 512),
        "ae_attention": {"type": "boolean"},
        "latent_channels": _int(1, 64),
        "cond_dim": _int(1, 1024),
        "t_avg": _int(1, 16),
        "scheduler": {
            "type": "object",
            "required": ["num_train_timesteps", "schedule"],
            "additionalProperties": False,
            "properties": {
                "num_train_timesteps": _int(2, 10000),
                "schedule": {"enum": ["linear_beta", "scaled_linear_beta", "sigmoid_beta", "cosine"]},
                "schedule_args": {"type": "object", "additionalProperties": False, "properties": {
                    k: {"type": "number", "exclusiveMinimum": 0, "maximum": 1} for k in ("beta_start", "beta_end", "s")}},
            },
        },
    },
}
"""Every number a network is built from, bounded: a stranger's card cannot ask for gigabytes."""

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
        "contrasts": {"type": "array", "items": {"enum": list(CONTRASTS)}, "minItems": 1,
                      "maxItems": len(CONTRASTS), "uniqueItems": True},
        "spatial_dims": {"enum": [2, 3]},
        "template": {"type": "string"},
        "grid_shape": _ints(1, 1024, 3, 3),
        "spacing_mm": {"type": "number", "exclusiveMinimum": 0, "maximum": 20},
        "normalisation": {"type": "string"},
        "architecture": ARCHITECTURE,
        "weights": {"type": ["string", "null"], "pattern": r"^[A-Za-z0-9_.-]+\.safetensors$"},
        "normative": {"type": ["string", "null"], "pattern": r"^[A-Za-z0-9_.-]+\.safetensors$"},
        "scoring": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "shift": {"type": "integer", "minimum": 0, "maximum": 4},
                "minmax": {"type": "boolean"},
                "median_size": {"type": "integer", "minimum": 0, "maximum": 11},
                "gaussian_sigma": {"type": "number", "minimum": 0, "maximum": 5},
                "erode": {"type": "integer", "minimum": 0, "maximum": 10},
                "lpips": {"type": "boolean"},
                "normative": {"type": "boolean"},
                "scan_scale": {"type": "boolean"},
                "polarity": {"enum": list(POLARITIES)},
            },
        },
        "threshold": {"type": "number"},
        "t_int": {
            "type": ["object", "null"],
            "required": ["default", "min", "max"],
            "properties": {**{k: _int(0, 10000) for k in ("default", "min", "max")}, "steps": _int(1, 10000)},
        },
        "training": {"type": "object"},
        "metrics": {"type": "object"},
    },
    "if": {"properties": {"family": {"enum": list(DIFFUSION_FAMILIES)}}},
    "then": {"required": ["t_int"], "properties": {"t_int": {"type": "object"},
                                                   "architecture": {"required": ["scheduler"]}}},
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

    def template_grid(self):
        """The :class:`~napari_brainuad.template.Template` whose grid the card names (the MNI152 2 mm model grid)."""
        from ..template import MNI_NAME, MNI_SHAPE, mni152

        if self.template == MNI_NAME and tuple(self.grid_shape) == MNI_SHAPE:
            return mni152()
        raise ModelError(f"model {self.name}: its grid ({self.template}, {self.grid_shape}) is not one this plugin "
                         "provides.")

    @property
    def accepted_contrasts(self) -> list[str]:
        """The contrasts this model accepts: the card's ``contrasts``, else its ``modality`` (every one for ``any``)."""
        if self.data.get("contrasts"):
            return list(self.data["contrasts"])
        return list(CONTRASTS) if self.modality == "any" else [self.modality]

    def summary(self) -> str:
        """One line for lists and tooltips: family, accepted contrasts, scoring, training data, key figures."""
        metrics = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in self.data.get("metrics", {}).get("summary", {}).items())
        data = self.data.get("training", {}).get("data", "no training data")
        scoring = "normative scoring" if self.data.get("scoring", {}).get("normative") else "residual scoring"
        if self.data.get("scoring", {}).get("scan_scale"):
            scoring += " of the residual scaled to the scan's median"
        polarity = self.data.get("scoring", {}).get("polarity", "both")
        if polarity != "both":
            scoring += f", {POLARITY_WORDS[polarity]}"
        accepts = "/".join(self.accepted_contrasts)
        return f"{self.family} ({self.spatial_dims}D, accepts {accepts}, {scoring}); trained on: {data}" + (
            f"; {metrics}" if metrics else "")


def validate_card(data: object, source: object = "card") -> ModelCard:
    """Check card data against :data:`SCHEMA`; raise :class:`ModelError` naming ``source``."""
    try:
        jsonschema.validate(data, SCHEMA)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "card"
        raise ModelError(f"{source}: invalid model card at '{where}': {exc.message}.") from None
    t_int = data.get("t_int")
    if t_int is not None and not t_int["min"] <= t_int["default"] <= t_int["max"]:
        raise ModelError(f"{source}: invalid model card: t_int default lies outside [min, max].")
    timesteps = data["architecture"].get("scheduler", {}).get("num_train_timesteps")
    if t_int is not None and timesteps is not None and max(t_int["max"], t_int.get("steps", 1)) >= timesteps:
        raise ModelError(f"{source}: invalid model card: t_int max and steps must be below the scheduler's "
                         f"{timesteps} training timesteps.")
    return ModelCard(data)


def read_card(folder: Path) -> ModelCard:
    """Read and validate ``folder/card.json`` (a regular file of at most :data:`MAX_CARD_BYTES`)."""
    path = Path(folder) / CARD_FILE
    if not path.exists():
        raise ModelError(f"{path}: no model card here (a model folder holds {CARD_FILE} and its weights).")
    try:
        text = read_regular_file(path, MAX_CARD_BYTES)
    except OSError as exc:
        raise ModelError(f"{path}: model card cannot be read ({_reason(exc)}).") from None
    try:
        data = json.loads(text.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ModelError(f"{path}: model card is not readable JSON ({_reason(exc)}).") from None
    if _depth(data) > MAX_JSON_DEPTH:
        raise ModelError(f"{path}: model card is nested deeper than {MAX_JSON_DEPTH} levels.")
    card = validate_card(data, path)
    return ModelCard(card.data, Path(folder))


def check_regular_file(path: Path, max_bytes: int, what: str) -> None:
    """Raise :class:`ModelError` unless ``path`` is a regular file (not a FIFO or device) of at most ``max_bytes``."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ModelError(f"{path}: {what} is missing.") from None
    except OSError as exc:
        raise ModelError(f"{path}: {what} cannot be read ({_reason(exc)}).") from None
    if not stat.S_ISREG(info.st_mode):
        raise ModelError(f"{path}: {what} is not a regular file.")
    if info.st_size > max_bytes:
        raise ModelError(f"{path}: {what} is larger than {max_bytes // 2**20} MiB.")


def read_regular_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; raises :class:`ModelError` otherwise.

    Opened without blocking and checked on the open descriptor, so a FIFO or a link to a device
    (``/dev/zero``) is refused instead of hanging or filling memory.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ModelError(f"{path}: model card is not a regular file.")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ModelError(f"{path}: model card is larger than {max_bytes // 1024} KiB.")
    return data


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number")


def _depth(value) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160].rstrip(".")


def write_card(folder: Path, data: dict) -> Path:
    """Validate and write a card as ``folder/card.json``."""
    validate_card(data, Path(folder) / CARD_FILE)
    path = Path(folder) / CARD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")  # readable back
    return path
