"""LightGBM / random-forest pixel classifiers and the model registry."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import sklearn

from s2agri.models import registry
from s2agri.models.baselines import LightGBMPixelClassifier, PixelClassifier, RandomForestPixelClassifier
from s2agri.models.registry import available_models, create_model, load_model, model_summary, register_model

#: Small, fast settings per model (1 thread: the test machine is shared).
FAST = {
    "lightgbm": {"n_estimators": 60, "num_leaves": 15, "n_jobs": 1},
    "random-forest": {"n_estimators": 25, "n_jobs": 1},
}
NAMES = sorted(FAST)


def make_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features whose label is a known function: XOR of two thresholds; noise features with NaN."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6)).astype(np.float32)
    X[:, 2:][rng.random((n, 4)) < 0.1] = np.nan
    y = ((X[:, 0] > 0) ^ (X[:, 1] > 0.5)).astype(np.uint8)
    return X, y


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    X, y = make_data(6000)
    return X[:4000], y[:4000], X[4000:], y[4000:]


@pytest.fixture(scope="module")
def fitted(data) -> dict[str, PixelClassifier]:
    X, y, _, _ = data
    return {name: create_model(name, **FAST[name]).fit(X, y) for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_learns_known_function(name: str, data, fitted) -> None:
    _, _, X_test, y_test = data
    proba = fitted[name].predict_proba(X_test)
    assert proba.dtype == np.float32 and proba.shape == (len(y_test),)
    assert proba.min() >= 0 and proba.max() <= 1
    assert np.mean((proba > 0.5) == y_test) > 0.95


@pytest.mark.parametrize("name", NAMES)
def test_nan_features_predict(name: str, fitted) -> None:
    X = np.full((3, 6), np.nan, dtype=np.float32)
    proba = fitted[name].predict_proba(X)
    assert np.isfinite(proba).all()


@pytest.mark.parametrize("name", NAMES)
def test_nan_is_learnt_natively(name: str) -> None:
    """Missing values carry information (NaN = cultivated here) and the models use it."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, 1)).astype(np.float32)
    missing = rng.random(3000) < 0.3
    y = ((x[:, 0] > 0.8) | missing).astype(np.uint8)
    x[missing] = np.nan
    model = create_model(name, **FAST[name]).fit(x, y)
    assert np.mean((model.predict_proba(x) > 0.5) == y) > 0.98
    assert model.predict_proba(np.array([[np.nan], [0.0]], np.float32)).round().tolist() == [1.0, 0.0]


@pytest.mark.parametrize("name", NAMES)
def test_sample_weight_is_used(name: str, data) -> None:
    """Flipped-label copies of the data with weight 0 do not change what is learnt."""
    X, y, X_test, y_test = data
    X2, y2 = np.concatenate([X, X]), np.concatenate([y, 1 - y])
    w = np.concatenate([np.ones(len(y)), np.zeros(len(y))]).astype(np.float32)
    model = create_model(name, **FAST[name]).fit(X2, y2, sample_weight=w)
    assert np.mean((model.predict_proba(X_test) > 0.5) == y_test) > 0.95


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip(name: str, fitted, data, tmp_path: Path) -> None:
    model = fitted[name]
    path = model.save(tmp_path / "sub" / "model.bin")
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.bin"]  # no temporary file left
    assert path.stat().st_size == model.serialized_bytes
    X_test = data[2]
    for loaded in (type(model).load(path), load_model(name, path)):
        assert type(loaded) is type(model)
        np.testing.assert_array_equal(loaded.predict_proba(X_test), model.predict_proba(X_test))
        assert loaded.n_parameters == model.n_parameters
    model.save(path)  # overwrite in place
    np.testing.assert_array_equal(type(model).load(path).predict_proba(X_test), model.predict_proba(X_test))


def test_random_forest_nodes(fitted) -> None:
    model = fitted["random-forest"]
    assert isinstance(model, RandomForestPixelClassifier)
    nodes = sum(tree.tree_.node_count for tree in model.estimator.estimators_)
    assert model.n_parameters == nodes > 0
    assert len(model.estimator.estimators_) == FAST["random-forest"]["n_estimators"]


def test_lightgbm_nodes(fitted) -> None:
    model = fitted["lightgbm"]
    assert isinstance(model, LightGBMPixelClassifier)
    table = model.booster.trees_to_dataframe()  # one row per node (splits and leaves)
    assert model.n_parameters == len(table) > 0
    assert table["tree_index"].nunique() == FAST["lightgbm"]["n_estimators"]


@pytest.mark.parametrize("name", NAMES)
def test_seeded(name: str, data) -> None:
    X, y, X_test, _ = data
    a = create_model(name, seed=3, **FAST[name]).fit(X, y).predict_proba(X_test)
    b = create_model(name, seed=3, **FAST[name]).fit(X, y).predict_proba(X_test)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_bad_input(name: str, data, fitted) -> None:
    X, y, _, _ = data
    model = create_model(name, **FAST[name])
    with pytest.raises(ValueError, match="not fitted"):
        model.predict_proba(X)
    with pytest.raises(ValueError, match=r"shape \(N, F\)"):
        model.fit(X[:, 0], y)
    with pytest.raises(ValueError, match="NaN labels"):
        model.fit(X, np.where(np.arange(len(y)) == 3, np.nan, y.astype(float)))
    with pytest.raises(ValueError, match="no samples of class 1"):
        model.fit(X, np.zeros_like(y))
    with pytest.raises(ValueError, match="0/1 labels"):
        model.fit(X, y * 2)
    with pytest.raises(ValueError, match="sample_weight"):
        model.fit(X, y, sample_weight=-np.ones(len(y)))
    X_inf = X.copy()
    X_inf[0, 0] = np.inf
    with pytest.raises(ValueError, match="infinite"):
        model.fit(X_inf, y)
    with pytest.raises(ValueError, match="fitted on 6"):
        fitted[name].predict_proba(X[:, :5])
    with pytest.raises(ValueError, match=r"no .* model file"):
        type(model).load("/nonexistent/model")


def test_random_forest_supports_nan() -> None:
    assert tuple(int(v) for v in sklearn.__version__.split(".")[:2]) >= (1, 4)


def test_registry() -> None:
    assert {"lightgbm", "random-forest"} <= set(available_models())
    model = create_model("random-forest", n_estimators=7, max_depth=3)
    assert isinstance(model, RandomForestPixelClassifier)
    assert model.params["n_estimators"] == 7 and model.params["max_depth"] == 3
    assert isinstance(create_model("lightgbm", num_leaves=7), LightGBMPixelClassifier)
    with pytest.raises(
        ValueError, match=r"unknown model 'xgboost': available models are .*lightgbm.*random-forest"
    ):
        create_model("xgboost")


def test_register_model_generic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    class Tiny:
        """A torch-like model: parameters() only."""

        class _P:
            def numel(self) -> int:
                return 5

        def parameters(self):
            return [self._P(), self._P()]

    register_model("tiny")(Tiny)
    register_model("tiny")(Tiny)  # re-registering the same constructor is fine
    assert "tiny" in available_models()
    assert model_summary(create_model("tiny")) == {
        "name": "Tiny",
        "n_parameters": 10,
        "serialized_bytes": None,
    }
    with pytest.raises(ValueError, match="already registered"):
        register_model("tiny")(dict)
    with pytest.raises(ValueError, match="no load"):
        load_model("tiny", "x")


def test_model_summary(fitted) -> None:
    for name, model in fitted.items():
        summary = model_summary(model)
        assert summary == {
            "name": name,
            "n_parameters": model.n_parameters,
            "serialized_bytes": model.serialized_bytes,
        }
        assert summary["n_parameters"] > 0 and summary["serialized_bytes"] > 0


def test_lightgbm_rejects_unknown_parameters_but_accepts_aliases() -> None:
    with pytest.raises(ValueError, match=r"unknown LightGBM parameters \['n_trees'\]"):
        create_model("lightgbm", n_trees=5)
    model = create_model("lightgbm", n_estimators=3, min_data_in_leaf=5, lambda_l2=1.0)
    assert model.params["min_data_in_leaf"] == 5 and model.params["lambda_l2"] == 1.0


def test_random_forest_file_holds_no_pickle(fitted, data, tmp_path: Path) -> None:
    """The forest is saved as numeric arrays only: np.load without pickles reads every array, and the
    rebuilt forest predicts exactly what the fitted one does."""
    path = fitted["random-forest"].save(tmp_path / "model.npz")
    with np.load(path, allow_pickle=False) as stored:
        assert all(not stored[name].dtype.hasobject for name in stored.files)
        assert (
            sum(name.startswith("nodes_") for name in stored.files) == FAST["random-forest"]["n_estimators"]
        )
    _, _, X_test, _ = data
    reloaded = load_model("random-forest", path)
    np.testing.assert_array_equal(
        reloaded.predict_proba(X_test), fitted["random-forest"].predict_proba(X_test)
    )
    assert reloaded.n_parameters == fitted["random-forest"].n_parameters


def test_lightgbm_fit_logs_progress_every_tenth_of_the_trees(caplog: pytest.LogCaptureFixture) -> None:
    from s2agri.models.baselines import LightGBMPixelClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.uint8)
    with caplog.at_level(logging.INFO, logger="s2agri.models.baselines"):
        LightGBMPixelClassifier(n_estimators=20).fit(X, y)
    lines = [r.getMessage() for r in caplog.records if "trees on 400 samples" in r.getMessage()]
    assert [line.split()[1] for line in lines] == [f"{k}/20" for k in range(2, 21, 2)]
