"""Model registry: `@register_model` on a SequenceModel subclass, `create_model(name, **config)`."""

from __future__ import annotations

from typing import Any

from predictor.models.base import SequenceModel

_REGISTRY: dict[str, type[SequenceModel]] = {}


def register_model(cls: type[SequenceModel]) -> type[SequenceModel]:
    """Class decorator: make a SequenceModel available under `name`."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no `name`")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"model name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def list_models() -> list[str]:
    """Names of the registered sequence models."""
    return sorted(_REGISTRY)


def get_model_class(name: str) -> type[SequenceModel]:
    """The registered SequenceModel class called `name` (ValueError lists the known ones)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}") from None


def create_model(name: str, **config: Any) -> SequenceModel:
    """Build a registered model from its name and config (feature_dim, num_classes, ...)."""
    return get_model_class(name)(**config)
