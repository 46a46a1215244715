"""Pixel classifiers of the 5x5-statistics baseline (seed 000): LightGBM and a random forest.

Both wrap their library behind one :class:`PixelClassifier` interface, used by the training and
prediction code of :mod:`s2agri.tasks.predict_pixel`:

* ``fit(X, y, sample_weight=None)`` on (N, F) features and (N,) labels (1 = cultivated);
* ``predict_proba(X)`` -> (N,) float32 probability of cultivated;
* ``save(path)`` / ``load(path)``, written atomically (temporary name in the same folder, then
  ``os.replace``): LightGBM as its native text model (``Booster.save_model``, reloaded with
  ``lgb.Booster(model_file=...)``); the random forest as numeric arrays in an ``.npz``
  (:mod:`s2agri.models.forest_io`: no pickle, so a model file cannot run code);
* ``n_parameters``: the number of tree nodes, split nodes plus leaves, summed over all trees
  (scikit-learn's ``tree_.node_count``; for LightGBM ``2 * num_leaves - 1`` per tree);
* ``serialized_bytes``: the size of what ``save`` writes.

Missing values: NaN features (pixels whose 5x5 window never had a valid observation) are
supported natively by both (LightGBM's missing-value branches; scikit-learn >= 1.4 forests,
checked with 1.9). Infinite values are rejected. Runs are seeded and deterministic
(LightGBM ``deterministic=True``, ``force_col_wise=True``); the CPU defaults use 2 threads.
"""

from __future__ import annotations

import abc
import functools
import io
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import lightgbm as lgb
import numpy as np
from sklearn.ensemble import RandomForestClassifier
from tqdm import tqdm

from . import compiled_trees
from .compiled_trees import CompiledTrees
from .forest_io import is_pickle_file, load_forest, save_forest
from .registry import register_model

LOGGER = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


def atomic_write(path: PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary name next to ``path``, then ``os.replace`` it into place."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def check_features(X: np.ndarray, n_features: int | None = None) -> np.ndarray:
    """``X`` as a C-contiguous (N, F) float32 array; ``ValueError`` on a bad shape or infinities."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must have shape (N, F), got {X.shape}")
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(f"X has {X.shape[1]} features, the model was fitted on {n_features}")
    if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer) or X.dtype == bool):
        raise ValueError(f"X must be numeric, got dtype {X.dtype}")
    X = np.ascontiguousarray(X, dtype=np.float32)
    if np.isinf(X).any():
        raise ValueError("X holds infinite values: use NaN for missing features")
    return X


def check_labels(y: np.ndarray, n_samples: int) -> np.ndarray:
    """``y`` as (N,) uint8 in {0, 1}; ``ValueError`` on NaN, other values or a missing class."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.shape != (n_samples,):
        raise ValueError(f"y must have shape ({n_samples},) to match X, got {y.shape}")
    if np.issubdtype(y.dtype, np.floating) and np.isnan(y).any():
        raise ValueError(f"y holds {int(np.isnan(y).sum())} NaN labels: drop those samples")
    if y.dtype != bool and not np.isin(y, (0, 1)).all():
        raise ValueError(f"y must hold 0/1 labels (1 = cultivated), got values {np.unique(y)[:5]}")
    y = y.astype(np.uint8)
    counts = np.bincount(y, minlength=2)
    for cls in (0, 1):
        if counts[cls] == 0:
            raise ValueError(f"y has no samples of class {cls}: both classes are needed to fit")
    return y


def check_sample_weight(sample_weight: np.ndarray | None, n_samples: int) -> np.ndarray | None:
    """``sample_weight`` as (N,) float32 (finite, >= 0, positive sum) or None."""
    if sample_weight is None:
        return None
    w = np.asarray(sample_weight, dtype=np.float32)
    if w.shape != (n_samples,):
        raise ValueError(f"sample_weight must have shape ({n_samples},) to match X, got {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError("sample_weight must be finite, non-negative and not all zero")
    return w


class PixelClassifier(abc.ABC):
    """A binary per-pixel classifier: 1 = cultivated. See the module docstring for the contract."""

    #: Registry name of the model.
    name: ClassVar[str]

    @abc.abstractmethod
    def fit(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> PixelClassifier:
        """Fit on (N, F) features ``X`` and (N,) 0/1 labels ``y``; returns ``self``."""

    @abc.abstractmethod
    def _predict(self, X: np.ndarray) -> np.ndarray:
        """Probability of class 1 for a checked (N, F) float32 ``X``."""

    @abc.abstractmethod
    def save(self, path: PathLike) -> Path:
        """Write the fitted model to ``path`` atomically; returns the path."""

    @classmethod
    @abc.abstractmethod
    def load(cls, path: PathLike) -> PixelClassifier:
        """A model read from a file written by :meth:`save`."""

    @property
    @abc.abstractmethod
    def is_fitted(self) -> bool:
        """True once fitted or loaded."""

    @property
    @abc.abstractmethod
    def n_features(self) -> int:
        """Number of input features of the fitted model."""

    @property
    @abc.abstractmethod
    def n_parameters(self) -> int:
        """Number of tree nodes (split nodes + leaves) over all trees."""

    @property
    @abc.abstractmethod
    def serialized_bytes(self) -> int:
        """Size in bytes of the file :meth:`save` writes."""

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """(N,) float32 probability of cultivated for (N, F) features (NaN allowed)."""
        self._require_fitted()
        X = check_features(X, self.n_features)
        if X.shape[0] == 0:
            return np.empty(0, dtype=np.float32)
        return np.asarray(self._predict(X), dtype=np.float32).reshape(-1)

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise ValueError(f"{self.name} model is not fitted: call fit() or load() first")

    def _check_fit_inputs(
        self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        X = check_features(X)
        if X.shape[0] == 0 or X.shape[1] == 0:
            raise ValueError(f"X must hold at least one sample and one feature, got {X.shape}")
        return X, check_labels(y, X.shape[0]), check_sample_weight(sample_weight, X.shape[0])


@functools.cache
def _lightgbm_parameter_names() -> frozenset[str]:
    """Every LightGBM parameter name and alias, as the library itself lists them."""
    aliases = lgb.basic._ConfigAliases._get_all_param_aliases()
    return frozenset(aliases) | frozenset(alias for names in aliases.values() for alias in names)


class TreeProgress:
    """LightGBM callback: a tqdm bar of the trees on a terminal, else an INFO line every tenth of them
    (a fit on millions of samples takes minutes and was silent)."""

    def __init__(self, n_trees: int, n_samples: int) -> None:
        self.n_trees = max(1, int(n_trees))
        self.n_samples = n_samples
        self.start = time.perf_counter()
        self.step = max(1, self.n_trees // 10)
        self.bar = (
            tqdm(total=self.n_trees, desc="lightgbm trees", unit="tree", leave=False)
            if sys.stderr.isatty()
            else None
        )
        self.lines: list[int] = []  #: trees at which an INFO line was logged

    def __call__(self, env: Any) -> None:
        done = env.iteration - env.begin_iteration + 1
        if self.bar is not None:
            self.bar.update(1)
            if done >= self.n_trees:
                self.bar.close()
            return
        if done % self.step == 0 or done == self.n_trees:
            self.lines.append(done)
            LOGGER.info(
                "lightgbm: %d/%d trees on %d samples (%.0f s)",
                done,
                self.n_trees,
                self.n_samples,
                time.perf_counter() - self.start,
            )


@register_model("lightgbm")
class LightGBMPixelClassifier(PixelClassifier):
    """LightGBM gradient-boosted trees (binary objective), trained with the native ``lgb.train``.

    Defaults for CPU: 150 trees of at most 63 leaves, learning rate 0.1, 80 % of the features per
    tree, bagging of 80 % of the rows every iteration, 2 threads. On 100,000 samples x 96 features:
    18,750 nodes, 1 MB saved, 8 s to fit. Half the trees of seed 000's recipe (300 at 0.05, the
    ``seed000`` recipe) for half the prediction time at the same hold-out score (pooled weighted MCC
    0.795 vs 0.798 on tuning boxes with the seasonal features). ``params`` are passed on to LightGBM and override the
    defaults. LightGBM's OpenMP threads busy-wait: on a loaded 2-core machine ``n_jobs=1`` can be
    several times faster than 2 (fit measured 18.6 s vs 73.4 s under load).
    """

    name = "lightgbm"

    def __init__(
        self,
        n_estimators: int = 150,
        num_leaves: int = 63,
        learning_rate: float = 0.1,
        feature_fraction: float = 0.8,
        bagging_fraction: float = 0.8,
        bagging_freq: int = 1,
        min_child_samples: int = 20,
        n_jobs: int = 2,
        seed: int = 0,
        **params: Any,
    ) -> None:
        if n_estimators < 1 or num_leaves < 2:
            raise ValueError(f"need n_estimators >= 1 and num_leaves >= 2, got {n_estimators}, {num_leaves}")
        unknown = sorted(set(params) - _lightgbm_parameter_names())
        if unknown:
            raise ValueError(
                f"unknown LightGBM parameters {unknown}: use names (or aliases) of the LightGBM parameter list"
            )
        self.n_estimators = int(n_estimators)
        self.n_jobs = int(n_jobs)
        self.seed = int(seed)
        self.params: dict[str, Any] = {
            "objective": "binary",
            "num_leaves": int(num_leaves),
            "learning_rate": float(learning_rate),
            "feature_fraction": float(feature_fraction),
            "bagging_fraction": float(bagging_fraction),
            "bagging_freq": int(bagging_freq),
            "min_child_samples": int(min_child_samples),
            "num_threads": self.n_jobs,
            "seed": self.seed,
            "deterministic": True,
            "force_col_wise": True,
            "verbosity": -1,
            **params,
        }
        self.booster: lgb.Booster | None = None
        #: Compiled trees predicting in place of ``booster`` (:meth:`compile_trees`), or None.
        self.compiled: CompiledTrees | None = None

    def compile_trees(self, required: bool = False) -> bool:
        """Predict from now on with the trees compiled to native code (:mod:`s2agri.models.compiled_trees`).

        Returns whether they are used. Without the packages or a C compiler: False (``required``: a
        ``RuntimeError`` naming what is missing).
        """
        self._require_fitted()
        reason = compiled_trees.unavailable_reason()
        if reason is None:
            try:
                library = compiled_trees.compile_model_text(
                    self._booster.model_to_string(), threads=self.n_jobs
                )
            except (OSError, RuntimeError) as exc:  # a compiler that fails, an unwritable cache
                reason = f"compiling failed ({' '.join(str(exc).split())[:300]})"
            else:
                self.compiled = compiled_trees.CompiledTrees(library, self.n_jobs)
                return True
        if required:
            raise RuntimeError(f"compiled trees unavailable: {reason}")
        LOGGER.info("compiled trees unavailable (%s): predicting with LightGBM", reason)
        return False

    def fit(
        self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None
    ) -> LightGBMPixelClassifier:
        X, y, w = self._check_fit_inputs(X, y, sample_weight)
        dataset = lgb.Dataset(X, label=y, weight=w, params={"verbosity": -1}, free_raw_data=True)
        self.compiled = None
        self.booster = lgb.train(
            self.params,
            dataset,
            num_boost_round=self.n_estimators,
            callbacks=[TreeProgress(self.n_estimators, len(y))],
        )
        LOGGER.info(
            "lightgbm: %d trees, %d nodes on %d samples x %d features",
            self._booster.num_trees(),
            self.n_parameters,
            *X.shape,
        )
        return self

    def _predict(self, X: np.ndarray) -> np.ndarray:
        if self.compiled is not None:
            return self.compiled.predict(X)
        return np.asarray(self._booster.predict(X, num_threads=self.n_jobs))

    @property
    def is_fitted(self) -> bool:
        return self.booster is not None

    @property
    def _booster(self) -> lgb.Booster:
        """The fitted booster (``ValueError`` before :meth:`fit` or :meth:`load`)."""
        if self.booster is None:
            raise ValueError(f"{self.name} model is not fitted: call fit() or load() first")
        return self.booster

    @property
    def n_features(self) -> int:
        self._require_fitted()
        return int(self._booster.num_feature())

    @property
    def n_parameters(self) -> int:
        """Split nodes + leaves of all trees: ``sum(2 * num_leaves - 1)`` over the trees."""
        self._require_fitted()
        text = self._booster.model_to_string()  # one "num_leaves=<n>" line per tree
        leaves = [
            int(line[len("num_leaves=") :]) for line in text.splitlines() if line.startswith("num_leaves=")
        ]
        return sum(2 * n - 1 for n in leaves)

    @property
    def serialized_bytes(self) -> int:
        self._require_fitted()
        return len(self._booster.model_to_string().encode())

    def save(self, path: PathLike) -> Path:
        """Native LightGBM text model (``Booster.save_model``), written atomically."""
        self._require_fitted()
        booster = self._booster

        def write(tmp: Path) -> None:
            booster.save_model(str(tmp))

        return atomic_write(path, write)

    @classmethod
    def load(cls, path: PathLike) -> LightGBMPixelClassifier:
        """The model of a LightGBM text file (``lgb.Booster(model_file=...)``)."""
        if not Path(path).is_file():
            raise ValueError(f"no LightGBM model file at {path}")
        with open(path, "rb") as handle:
            head = handle.read(5)
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - (1 << 20)))
            tail = handle.read()
        # LightGBM reads a truncated file without complaint (fewer trees: a silently wrong map)
        if head != b"tree\n" or b"\nend of trees\n" not in tail:
            raise ValueError(f"{path} is not a complete LightGBM text model (empty or truncated)")
        try:
            booster = lgb.Booster(model_file=str(path))
        except lgb.basic.LightGBMError as exc:
            raise ValueError(f"{path} is not a LightGBM model ({' '.join(str(exc).split())})") from exc
        threads = int((booster.params or {}).get("num_threads", 2) or 2)  # the n_jobs it was trained with
        model = cls(n_estimators=max(1, booster.num_trees()), n_jobs=threads)
        model.booster = booster
        return model


@register_model("random-forest")
class RandomForestPixelClassifier(PixelClassifier):
    """scikit-learn ``RandomForestClassifier``, size-bounded for full-scene use.

    Defaults: 100 trees, ``max_depth=20`` and ``min_samples_leaf=10`` (a tree has at most
    ``2 * N / 10`` nodes for N samples, and at most ``2**21 - 1``), ``sqrt`` features per split,
    2 jobs. On 100,000 samples x 96 features: 583,030 nodes, 47 MB saved, 95 s to fit on 2 cores.
    ``params`` go to ``RandomForestClassifier`` and override the defaults.
    """

    name = "random-forest"

    def __init__(
        self,
        n_estimators: int = 100,
        max_depth: int | None = 20,
        min_samples_leaf: int = 10,
        max_features: str | float | None = "sqrt",
        n_jobs: int = 2,
        seed: int = 0,
        **params: Any,
    ) -> None:
        if n_estimators < 1:
            raise ValueError(f"need n_estimators >= 1, got {n_estimators}")
        self.params: dict[str, Any] = {
            "n_estimators": int(n_estimators),
            "max_depth": max_depth,
            "min_samples_leaf": min_samples_leaf,
            "max_features": max_features,
            "n_jobs": int(n_jobs),
            "random_state": int(seed),
            **params,
        }
        self.estimator: RandomForestClassifier | None = None

    def fit(
        self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None
    ) -> RandomForestPixelClassifier:
        X, y, w = self._check_fit_inputs(X, y, sample_weight)
        self.estimator = RandomForestClassifier(**self.params).fit(X, y, sample_weight=w)
        LOGGER.info(
            "random forest: %d trees, %d nodes on %d samples x %d features",
            len(self._estimator.estimators_),
            self.n_parameters,
            *X.shape,
        )
        return self

    def _predict(self, X: np.ndarray) -> np.ndarray:
        proba = self._estimator.predict_proba(X)
        return proba[:, list(self._estimator.classes_).index(1)]

    @property
    def is_fitted(self) -> bool:
        return self.estimator is not None

    @property
    def _estimator(self) -> RandomForestClassifier:
        """The fitted forest (``ValueError`` before :meth:`fit` or :meth:`load`)."""
        if self.estimator is None:
            raise ValueError(f"{self.name} model is not fitted: call fit() or load() first")
        return self.estimator

    @property
    def n_features(self) -> int:
        self._require_fitted()
        return int(self._estimator.n_features_in_)

    @property
    def n_parameters(self) -> int:
        """Split nodes + leaves of all trees: ``sum(tree.tree_.node_count)``."""
        self._require_fitted()
        return int(sum(tree.tree_.node_count for tree in self._estimator.estimators_))

    @property
    def serialized_bytes(self) -> int:
        self._require_fitted()
        buffer = io.BytesIO()
        save_forest(self.estimator, buffer)
        return buffer.getbuffer().nbytes

    def save(self, path: PathLike) -> Path:
        """The forest as numeric arrays (:mod:`s2agri.models.forest_io`, no pickle), written atomically."""
        self._require_fitted()

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                save_forest(self.estimator, handle)

        return atomic_write(path, write)

    @classmethod
    def load(cls, path: PathLike) -> RandomForestPixelClassifier:
        """The forest of a file written by :meth:`save`. Pickles (``.joblib``) are refused: loading one
        can run any code."""
        if is_pickle_file(path):
            raise ValueError(
                f"{Path(path).name} is a pickle, which can run code when loaded: s2agri does not load "
                "pickles; train the model again (it is then saved as model.npz)"
            )
        if not Path(path).is_file():
            raise ValueError(f"no random-forest model file at {path}")
        estimator = load_forest(path)
        params = estimator.get_params()
        model = cls(seed=params.pop("random_state") or 0, **params)
        model.estimator = estimator
        return model
