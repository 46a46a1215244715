"""Named model sizes: ``cpu`` (the registry constructors' defaults) and ``paper`` (the seeds' sizes).

:func:`preset_kwargs` gives the constructor keyword arguments of a preset; ``train.params`` of a
config override them. The paper sizes are those the seeds report (parameter counts reproduced in
each model module's docstring); the GCNN's default already is seed 000's network. Only torch
models have presets: the pixel classifiers (LightGBM, RandomForest) take ``train.params`` alone.
"""

from __future__ import annotations

from typing import Any, Literal

Preset = Literal["cpu", "paper"]
PRESETS: tuple[str, ...] = ("cpu", "paper")


def paper_configs() -> dict[str, dict[str, Any]]:
    """Model name -> constructor arguments of the seed's configuration (imports the model modules)."""
    from . import deeplab, fgunet, parcel, pixel_nets, recurrent, spinet, unet

    return {
        "gcnn": {},
        "unet-b": dict(unet.PAPER_CONFIG),
        "unet-tc": dict(unet.PAPER_CONFIG),
        "unet-delineation": dict(unet.PAPER_CONFIG),
        "spinet": dict(spinet.PAPER_CONFIG),
        "spinet-nomrf": dict(spinet.PAPER_CONFIG),
        "fg-unet": dict(fgunet.PAPER_CONFIG),
        "deeplab": dict(deeplab.PAPER_CONFIG),
        "mlp": dict(pixel_nets.MLP_PAPER_CONFIG),
        "lstm": dict(pixel_nets.LSTM_PAPER_CONFIG),
        "convlstm": dict(recurrent.PAPER_CONFIG),
        "convstar": dict(recurrent.PAPER_CONFIG),
        **{name: dict(config) for name, config in parcel.PAPER_CONFIGS.items()},
    }


def preset_kwargs(model: str, preset: str = "cpu") -> dict[str, Any]:
    """Constructor arguments of ``model`` at ``preset``: ``{}`` for ``cpu`` (the defaults)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: use one of {', '.join(PRESETS)}")
    if preset == "cpu":
        return {}
    configs = paper_configs()
    if model not in configs:
        raise ValueError(
            f"model {model!r} has no paper preset: presets exist for {', '.join(sorted(configs))}"
        )
    return configs[model]
