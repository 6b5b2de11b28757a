"""Model registry, cards and families."""
from .base import AnomalyModel
from .card import ModelCard, ModelError, read_card, validate_card, write_card
from .registry import FAMILIES, available_models, find_card, load_model, model_names, resolve_device

__all__ = ["AnomalyModel", "ModelCard", "ModelError", "read_card", "validate_card", "write_card", "FAMILIES",
           "available_models", "find_card", "load_model", "model_names", "resolve_device"]
