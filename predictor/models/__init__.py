"""Sequence models: one file per architecture, one contract (see base.py), one registry."""

from predictor.models import attention_lstm, ensemble, frame_pool, nextvlad  # noqa: F401  (registers)
from predictor.models.base import SequenceModel, length_mask
from predictor.models.registry import create_model, get_model_class, list_models, register_model

__all__ = ["SequenceModel", "create_model", "get_model_class", "length_mask", "list_models", "register_model"]
