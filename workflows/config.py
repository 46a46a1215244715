"""One validated schema for every parameter of the per-box mapping workflow (eo-grow style).

Unknown keys are rejected, every field has a default that works, and a run writes its resolved
config next to its outputs, so one file reproduces it. Configs are YAML or JSON files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from s2agri.models.names import (  # noqa: F401 (re-exported)
    DEEP_MODELS,
    MONTHLY_MODELS,
    PARCEL_MODELS,
    PIXEL_MODELS,
    TRAINABLE_MODELS,
    TTAMode,
    family_name,
)
from s2agri.models.trainer_config import TrainerConfig
from s2agri.tasks.errors import S2AgriInputError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MaskConfig(_Strict):
    """Which observations count as valid, and which frames are kept."""

    clp_threshold: float | None = Field(None, ge=0.0, le=1.0, description="also invalid where CLP/255 > this")
    scl_invalid_classes: tuple[int, ...] | None = Field(None, description="SCL classes treated as invalid")
    min_valid_fraction: float = Field(0.0, ge=0.0, le=1.0, description="drop frames with fewer valid pixels")


class FeatureConfig(_Strict):
    """The pixel models' features: crop-calendar features (``kind: seasonal``, default) or seed 000's
    5x5 neighbourhood statistics averaged over time (``kind: stats5x5``)."""

    kind: Literal["seasonal", "stats5x5"] = Field(
        "seasonal",
        description="'seasonal': seasonal composites, index percentiles and context (s2agri.tasks.seasonal); "
        "'stats5x5': seed 000's 5x5 statistics (mode, window)",
    )
    mode: Literal["per_frame", "pooled"] = Field("per_frame", description="stats5x5 only")
    window: int = Field(5, ge=1, le=15, description="stats5x5 only: odd window side")
    n_windows: int = Field(6, ge=1, le=24, description="seasonal only: equal windows of the season")
    season: tuple[str, str] = Field(
        ("03-01", "09-01"), description="seasonal only: first and last day (MM-DD)"
    )
    indices: tuple[Literal["NDVI", "NDWI", "NDMI", "NBR"], ...] = Field(
        ("NDVI", "NDWI", "NDMI", "NBR"), description="seasonal only: spectral indices"
    )
    percentiles: tuple[float, ...] = Field((10.0, 50.0, 90.0), description="seasonal only: of each index")
    neighbourhood: int = Field(5, ge=0, le=15, description="seasonal only: context window side, 0 = none")

    @model_validator(mode="before")
    @classmethod
    def _stats5x5_when_mode_given(cls, data: Any) -> Any:
        """Configs written before the seasonal features name only ``mode``/``window``: they meant stats5x5."""
        if isinstance(data, dict) and "kind" not in data and ({"mode", "window"} & set(data)):
            return {**data, "kind": "stats5x5"}
        return data

    @field_validator("window")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("window must be odd")
        return value

    @field_validator("neighbourhood")
    @classmethod
    def _odd_or_zero(cls, value: int) -> int:
        if value and value % 2 == 0:
            raise ValueError("neighbourhood must be 0 or odd")
        return value

    @field_validator("season")
    @classmethod
    def _season(cls, value: tuple[str, str]) -> tuple[str, str]:
        from s2agri.tasks.seasonal import window_of_frames

        window_of_frames(["2019-03-01"], 1, *value)
        return value


ModelName = Literal[TRAINABLE_MODELS]  # type: ignore[valid-type]


class _TrainBase(_Strict):
    """What every trainable model takes: its name, size preset, constructor arguments and seed."""

    model: str  # each family narrows it to its models
    preset: Literal["cpu", "paper"] = Field(
        "cpu",
        description="model size: 'cpu' (the registry defaults, CPU-feasible) or 'paper' (the seed's "
        "configuration, s2agri.models.presets); train.params override either",
    )
    params: dict[str, float | int | str | bool] = Field(
        default_factory=dict, description="model keyword arguments (constructor of the registry model)"
    )
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _params_fit_the_model(self) -> _TrainBase:
        """``params`` must be keyword arguments of the model's constructor, of their types (checked
        against the registry; the model modules are imported only when ``params`` are given)."""
        if self.params:
            from s2agri.models.registry import check_params

            check_params(self.model, self.params)
        return self


class PixelTrainConfig(_TrainBase):
    """Pixel classifiers (LightGBM, random forest): pixel sampling and fitting."""

    model: Literal[PIXEL_MODELS] = Field(  # type: ignore[valid-type]
        "lightgbm",
        description="the model; its family gives this section's keys: the pixel models (lightgbm, "
        "random-forest) take the sampling keys below, deep and parcel models only model, preset, params, seed",
    )
    samples_per_box: int = Field(20_000, ge=100, le=2_000_000)
    max_samples: int = Field(
        400_000,
        ge=1_000,
        le=10_000_000,
        description="samples kept in memory for fitting (10 million x 157 features is 6.3 GB)",
    )
    balanced: bool = True
    sample_weights: bool = Field(True, description="weight samples with the challenge weight map")
    threshold_boxes: float = Field(
        0.25,
        ge=0.0,
        lt=1.0,
        description="fraction of the training boxes held out to choose the decision threshold "
        "on weighted MCC (then the model is refitted on every box); 0 keeps predict.threshold",
    )


class DeepTrainConfig(_TrainBase):
    """Torch segmenters: the training recipe is the ``deep`` section."""

    model: Literal[DEEP_MODELS]  # type: ignore[valid-type]


class ParcelTrainConfig(_TrainBase):
    """Parcel classifiers: the training recipe is the ``parcel`` section."""

    model: Literal[PARCEL_MODELS]  # type: ignore[valid-type]


#: The ``train`` schema of every trainable family (the ``rule`` family is not trained).
TRAIN_CONFIGS: dict[str, type[_TrainBase]] = {
    "pixel": PixelTrainConfig,
    "deep": DeepTrainConfig,
    "parcel": ParcelTrainConfig,
}
#: Keys only the pixel family's ``train`` takes (configs dumped before the split hold them for all).
PIXEL_ONLY_KEYS: tuple[str, ...] = tuple(
    sorted(set(PixelTrainConfig.model_fields) - set(_TrainBase.model_fields))
)


def _train_family(value: Any) -> str | None:
    """The family tag of a ``train`` section (a mapping or a model); ``None`` for an unknown model."""
    model = value.get("model", "lightgbm") if isinstance(value, dict) else getattr(value, "model", None)
    try:
        return family_name(str(model))
    except ValueError:
        return None


def _without_unused_pixel_keys(value: Any, info: ValidationInfo) -> Any:
    """A ``train`` mapping of a non-pixel model without the pixel-only keys that change nothing.

    Configs dumped before ``train`` became one schema per family hold the pixel keys for every model:
    keys at their default are dropped; another value is an error naming the key (it never had an
    effect on this model). Stored configs of trained models (``context={"stored": True}``) drop them all.
    """
    family = _train_family(value)
    if not isinstance(value, dict) or family in (None, "pixel"):
        return value
    stored = bool(info.context and info.context.get("stored"))
    defaults = PixelTrainConfig.model_fields
    kept = {}
    for key, item in value.items():
        if key not in PIXEL_ONLY_KEYS:
            kept[key] = item
        elif not stored and item != defaults[key].default:
            raise ValueError(
                f"{key} is a setting of the pixel models ({', '.join(PIXEL_MODELS)}); "
                f"{family} model {value.get('model')} does not use it: remove it"
            )
    return kept


#: ``train``: one schema per model family, chosen by ``train.model``.
TrainConfig = Annotated[
    Annotated[
        Annotated[PixelTrainConfig, Tag("pixel")]
        | Annotated[DeepTrainConfig, Tag("deep")]
        | Annotated[ParcelTrainConfig, Tag("parcel")],
        Discriminator(
            _train_family,
            custom_error_type="unknown_model",
            custom_error_message=f"train.model must be one of {', '.join(TRAINABLE_MODELS)}",
        ),
    ],
    BeforeValidator(_without_unused_pixel_keys),
]


def train_for_model(train: _TrainBase, model: str | None = None, preset: str | None = None) -> _TrainBase:
    """``train`` for another ``model`` (and/or ``preset``), in that model's family schema: the shared
    keys are kept, pixel-only keys at their defaults are dropped (a set one is a ``ValueError``)."""
    data = train.model_dump()
    if model is not None:
        data["model"] = model
    if preset is not None:
        data["preset"] = preset
    return MappingConfig.model_validate({"train": data}).train


#: The deep models' training recipe on CPU: random patches (``deep.samples_per_epoch``), the 8 dihedral
#: augmentations, AdamW with a cosine schedule after a one-epoch warm-up, gradient clipping, class
#: balance in the loss (``deep.class_balance``), and best.pt, early stopping and the decision threshold
#: chosen on the validation weighted MCC of a quarter of the boxes. Seed 000's recipe is
#: ``--config seed000-deep``.
DEEP_RECIPE: dict[str, Any] = {
    "lr": 2e-3,
    "batch_size": 16,
    "max_epochs": 30,
    "patience": 8,
    "schedule": "cosine",
    "warmup_epochs": 1.0,
    "selection": "val_weighted_mcc",
    "weight_decay": 1e-4,
    "grad_clip": 1.0,
}


class DeepConfig(_Strict):
    """Tensor stacks, patches and the training loop of the deep segmenters (``gcnn``, ``unet-*``)."""

    n_frames: int = Field(
        20, ge=1, description="frames per box: the N least cloudy in time order (padded when fewer)"
    )
    all_frames: bool = Field(
        False,
        description="GCNN only: every frame, the variable-length stack of seed 000 (trains worse here: "
        "the pooled features then mix different frames and bands from box to box)",
    )
    patch_size: int = Field(100, ge=8, description="training patch side at 2.5 m (a multiple of 4)")
    val_fraction: float = Field(
        0.25,
        ge=0.0,
        lt=1.0,
        description="training boxes held out for validation (early stopping, checkpoint and threshold)",
    )
    weights: Literal["challenge", "none"] = "challenge"
    cache_boxes: int = Field(2, ge=1, description="prepared boxes kept in memory while training")
    samples_per_epoch: int | None = Field(
        512,
        ge=1,
        description="training patches per epoch at random origins, spread evenly over the boxes "
        "(None: every patch of a fixed grid of each box, seed 000's epochs)",
    )
    class_balance: bool = Field(
        True,
        description="weight cultivated pixels by not-cultivated/cultivated of the training boxes in the "
        "loss (unless deep.trainer.pos_weight is set)",
    )
    trainer: TrainerConfig = Field(
        default_factory=lambda: TrainerConfig(**DEEP_RECIPE),
        description="the training loop; keys not given take the CPU recipe (DEEP_RECIPE), not seed 000's",
    )
    tile: int = Field(128, ge=16, description="inference tile side at 10 m")
    inputs: Literal["frames", "monthly"] = Field(
        "monthly",
        description="time steps of the stacks: the cloud-masked monthly medians of deep.months (default: "
        "higher validation scores for every segmenter measured), or 'frames', the deep.n_frames least "
        "cloudy frames (seed 000; convlstm / convstar always read monthly medians)",
    )
    months: tuple[int, ...] = Field(
        (3, 4, 5, 6, 7, 8),
        description="calendar months of the monthly medians (deep.inputs monthly, convlstm, convstar; the "
        "challenge season)",
    )

    @field_validator("trainer", mode="before")
    @classmethod
    def _recipe_defaults(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {**DEEP_RECIPE, **value}
        return value

    @model_validator(mode="before")
    @classmethod
    def _frame_settings_mean_frames(cls, data: Any) -> Any:
        """``n_frames`` and ``all_frames`` choose frames: a section that sets one of them but not
        ``inputs`` (as configs written before monthly inputs became the default) means ``frames``."""
        if isinstance(data, dict) and "inputs" not in data and ("n_frames" in data or data.get("all_frames")):
            return {**data, "inputs": "frames"}
        return data

    @field_validator("patch_size")
    @classmethod
    def _multiple_of_scale(cls, value: int) -> int:
        if value % 4:
            raise ValueError("patch_size must be a multiple of 4 (whole 10 m pixels)")
        return value

    @field_validator("months")
    @classmethod
    def _calendar_months(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(not 1 <= m <= 12 for m in value) or list(value) != sorted(set(value)):
            raise ValueError("months must be increasing calendar months 1..12, e.g. [3, 4, 5, 6, 7, 8]")
        return value


class ParcelConfig(_Strict):
    """Parcel-level models (``tempcnn``, ``transformer``, ``lstm-parcel``): zonal statistics of known
    parcels (the box's ``vector_timeless/REFERENCE``) -> one label per parcel -> painted at 2.5 m."""

    steps: Literal["monthly", "frames"] = Field(
        "monthly",
        description="time steps: monthly medians of deep.months (fixed length, needed by tempcnn) or "
        "every frame (transformer, lstm-parcel; padded per batch)",
    )
    buffer_m: float = Field(0.0, le=0.0, description="parcel buffer (m) before taking its 10 m pixels")
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="training boxes held out for validation")
    batch_size: int = Field(128, ge=1, description="parcels per batch")
    lr: float = Field(1e-3, gt=0.0, description="Adam learning rate")
    max_epochs: int = Field(80, ge=1)
    patience: int = Field(10, ge=1, description="stop after this many epochs without a better val loss")


class PredictConfig(_Strict):
    """2.5 m prediction."""

    threshold: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="decision threshold; None: the one the model chose on validation boxes, else 0.5",
    )
    mode: Literal["refine", "proba-upsample", "feature-upsample"] = Field(
        "refine",
        description="pixel models: 'proba-upsample' (10 m probability, bicubic x4), 'feature-upsample' "
        "(features bicubic x4, every 2.5 m pixel predicted) or 'refine' (proba-upsample, then "
        "feature-upsample only where the upsampled probability is within threshold ± refine_margin)",
    )
    refine_margin: float = Field(
        0.2, ge=0.0, le=1.0, description="refine: probability margin around the threshold"
    )
    compiled_trees: Literal["auto", "on", "off"] = Field(
        "auto",
        description="LightGBM: predict with the trees compiled to native code (same probabilities, "
        "2.5-3x faster; needs the 'fast' extra and a C compiler): 'auto' where possible, 'on' or fail, 'off'",
    )
    min_observations: int = Field(
        1,
        ge=1,
        description="valid observations a 10 m pixel needs to be mapped; fewer: nodata (not cultivated, no parcel)",
    )
    tta: TTAMode = Field(
        "dihedral",
        description="deep segmenters: test-time augmentation, the probabilities averaged over the box "
        "predicted in 8 orientations ('dihedral', the default: higher validation weighted MCC), 4 "
        "('flips') or 1 ('none', 8x faster); training chooses the threshold with it",
    )

    @property
    def cutoff(self) -> float:
        """The threshold to apply: ``threshold``, or 0.5 when none is set."""
        return 0.5 if self.threshold is None else self.threshold


class VectoriseConfig(_Strict):
    """Predicted mask -> parcel polygons."""

    min_area_m2: float = Field(400.0, ge=0.0)
    simplify_tolerance_m: float = Field(2.5, ge=0.0)
    instances: Literal["watershed", "components"] = Field(
        "watershed",
        description="fields: 'watershed' splits touching fields along a delineation model's predicted "
        "boundaries, else at narrow necks of the mask (s2agri.tasks.instances); 'components' keeps the "
        "4-connected components of the mask",
    )
    smoothing_px: float = Field(
        1.5, ge=0.0, description="watershed: Gaussian smoothing of the distance map (px)"
    )
    h_px: float = Field(2.0, gt=0.0, description="watershed: depth (px) a field core must have to be a field")
    surface_h: float = Field(
        0.15,
        gt=0.0,
        lt=1.0,
        description="watershed with a delineation model: depth a field core must have on the predicted "
        "surface distance x (1 - boundary)",
    )


class ExportConfig(_Strict):
    """Rasters written next to the submission GeoTIFFs."""

    probability_cog: bool = True
    proba_dtype: Literal["uint8", "float32"] = "uint8"


class MappingConfig(_Strict):
    """Everything the per-box cultivated-land workflow needs."""

    masks: MaskConfig = MaskConfig()
    features: FeatureConfig = FeatureConfig()
    train: TrainConfig = PixelTrainConfig()
    deep: DeepConfig = DeepConfig()
    parcel: ParcelConfig = ParcelConfig()
    predict: PredictConfig = PredictConfig()
    vectorise: VectoriseConfig = VectoriseConfig()
    export: ExportConfig = ExportConfig()
    workers: int = Field(1, ge=1, description="parallel boxes (eo-learn EOExecutor processes)")


def pixel_training(config: MappingConfig) -> PixelTrainConfig:
    """The ``train`` section of a pixel model's config (sampling and fitting settings)."""
    if not isinstance(config.train, PixelTrainConfig):
        raise ValueError(
            f"model {config.train.model} is not a pixel model: it has no pixel sampling settings"
        )
    return config.train


def validation_problems(exc: ValidationError, root: str = "config") -> str:
    """pydantic's errors as one line: ``key.path: message; ...`` (without the family tag pydantic puts
    after ``train``: ``train.seed``, not ``train.pixel.seed``)."""

    def path(loc: tuple[int | str, ...]) -> str:
        parts = [
            part for i, part in enumerate(loc) if not (i and loc[i - 1] == "train" and part in TRAIN_CONFIGS)
        ]
        return ".".join(map(str, parts)) or root

    return "; ".join(f"{path(e['loc'])}: {e['msg']}" for e in exc.errors())


def read_config_mapping(path: str | Path) -> dict:
    """The key/value mapping of a YAML/JSON config file; an input error naming the problem otherwise."""
    path = Path(path)
    if not path.is_file():
        raise S2AgriInputError(
            f"config {path} does not exist: give the path of a YAML or JSON file or a recipe name "
            f"({', '.join(recipe_names())})"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise S2AgriInputError(f"config {path} is not a text file: give a YAML or JSON file") from None
    except yaml.YAMLError as exc:
        raise S2AgriInputError(f"config {path} is not valid YAML/JSON: {' '.join(str(exc).split())}") from exc
    if not isinstance(data, dict):
        raise S2AgriInputError(
            f"config {path} must be a mapping of keys to values, not {type(data).__name__}"
        )
    return data


#: Named configs shipped with s2agri (``workflows/recipes/<name>.yaml``): ``--config seed000``.
RECIPES_FOLDER = Path(__file__).resolve().parent / "recipes"


def recipe_names() -> list[str]:
    """Names of the shipped recipes."""
    return sorted(path.stem for path in RECIPES_FOLDER.glob("*.yaml"))


def load_config(path: str | Path | None) -> MappingConfig:
    """Read and validate a YAML/JSON config, or a shipped recipe by name (:func:`recipe_names`, when no
    such file exists); ``None`` gives the defaults."""
    if path is None:
        return MappingConfig()
    if not Path(path).exists() and str(path) in recipe_names():
        path = RECIPES_FOLDER / f"{path}.yaml"
    data = read_config_mapping(path)
    try:
        return MappingConfig.model_validate(data)
    except ValidationError as exc:
        raise S2AgriInputError(f"config {path} is invalid: {validation_problems(exc)}") from exc


def dump_config(config: MappingConfig, path: Path) -> None:
    """Write the resolved config (all defaults filled in) as JSON, atomically."""
    from s2agri.tasks.export import atomic_write_text

    atomic_write_text(path, json.dumps(config.model_dump(mode="json"), indent=2) + "\n")
