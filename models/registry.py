"""Name -> constructor registry of the s2agri models.

A model is registered under a name with the :func:`register_model` decorator (on a class or a
factory function) and built with :func:`create_model`. The registry does not care what the
constructor returns: pixel classifiers (:mod:`s2agri.models.baselines`) and, later, torch
``nn.Module`` segmenters share it. Built-in models live in the modules of :data:`BUILTIN_MODULES`,
imported on the first lookup so that ``import s2agri.models.registry`` stays cheap (no torch).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

LOGGER = logging.getLogger(__name__)

#: Modules whose import registers the built-in models (imported lazily, in this order).
BUILTIN_MODULES: list[str] = [
    "s2agri.models.baselines",
    "s2agri.models.gcnn",
    "s2agri.models.unet",
    "s2agri.models.pixel_nets",
    "s2agri.models.fgunet",
    "s2agri.models.parcel",
    "s2agri.models.spinet",
    "s2agri.models.deeplab",
    "s2agri.models.recurrent",
    "s2agri.models.field_delineation",
]

_REGISTRY: dict[str, Callable[..., Any]] = {}
_builtins_loaded = False

C = TypeVar("C", bound=Callable[..., Any])


def register_model(name: str) -> Callable[[C], C]:
    """Decorator registering a constructor under ``name``; a name can be registered only once.

    Registering the very same constructor again (a module re-import) is accepted silently.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a model name must be a non-empty string, got {name!r}")

    def decorator(constructor: C) -> C:
        existing = _REGISTRY.get(name)
        if existing is not None and _qualname(existing) != _qualname(constructor):
            raise ValueError(f"model name {name!r} is already registered to {_qualname(existing)}")
        _REGISTRY[name] = constructor
        return constructor

    return decorator


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    _builtins_loaded = True


def available_models() -> list[str]:
    """Sorted names of the registered models."""
    _load_builtins()
    return sorted(_REGISTRY)


def get_constructor(name: str) -> Callable[..., Any]:
    """The constructor registered under ``name``; ``ValueError`` listing the names otherwise."""
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}: available models are {', '.join(available_models())}"
        ) from None


def _constructor_signature(constructor: Callable[..., Any]) -> tuple[dict[str, Any], bool]:
    """``({name: type hint}, takes **kwargs)`` of a constructor's keyword arguments (classes: ``__init__``)."""
    function = constructor.__init__ if inspect.isclass(constructor) else constructor
    hints = typing.get_type_hints(function)
    named: dict[str, Any] = {}
    var_keyword = False
    for parameter in inspect.signature(constructor).parameters.values():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            var_keyword = True
        elif parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            named[parameter.name] = hints.get(parameter.name, Any)
    return named, var_keyword


def check_params(name: str, params: Mapping[str, Any]) -> None:
    """``ValueError`` (one line) when ``params`` are not keyword arguments of model ``name``'s
    constructor, or a value does not fit the argument's type; a constructor that takes ``**kwargs``
    (LightGBM: any LightGBM parameter) accepts other names."""
    from pydantic import TypeAdapter, ValidationError

    named, var_keyword = _constructor_signature(get_constructor(name))
    unknown = sorted(set(params) - set(named))
    if unknown and not var_keyword:
        raise ValueError(f"{', '.join(unknown)} are not arguments of {name}: use {', '.join(sorted(named))}")
    for key, value in params.items():
        if key not in named:
            continue
        hint = named[key]
        fits = not (isinstance(value, bool) and hint in (int, float))  # True is an int to Python
        if fits:
            try:  # strict: no "3" -> 3 coercion; a float argument takes ints
                TypeAdapter(hint).validate_python(value, strict=hint is not float)
            except ValidationError:
                fits = False
        if not fits:
            shown = getattr(hint, "__name__", str(hint))
            raise ValueError(f"{key}={value!r} does not fit {name}'s argument {key} ({shown})")


def create_model(name: str, **kwargs: Any) -> Any:
    """A new model ``name`` built with ``kwargs`` (the keyword arguments of its constructor)."""
    model = get_constructor(name)(**kwargs)
    LOGGER.debug("created model %s", name)
    return model


def load_model(name: str, path: str | Path) -> Any:
    """Model ``name`` loaded from ``path`` with its constructor's ``load`` classmethod."""
    constructor = get_constructor(name)
    loader = getattr(constructor, "load", None)
    if not callable(loader):
        raise ValueError(f"model {name!r} has no load(path) method: load it with its own API")
    return loader(path)


def model_summary(model: Any) -> dict[str, Any]:
    """``{"name", "n_parameters", "serialized_bytes"}`` of a model, for the model table.

    ``name`` is ``model.name`` (else the class name); ``n_parameters`` is ``model.n_parameters``,
    else the element count of ``model.parameters()`` (torch modules); ``serialized_bytes`` is
    ``model.serialized_bytes`` or None when the model does not report it.
    """
    name = getattr(model, "name", None) or type(model).__name__
    n_parameters = getattr(model, "n_parameters", None)
    if n_parameters is None and callable(getattr(model, "parameters", None)):
        n_parameters = sum(int(p.numel()) for p in model.parameters())
    serialized = getattr(model, "serialized_bytes", None)
    return {
        "name": str(name),
        "n_parameters": None if n_parameters is None else int(n_parameters),
        "serialized_bytes": None if serialized is None else int(serialized),
    }
