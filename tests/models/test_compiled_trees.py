"""LightGBM trees compiled to native code: same probabilities, private cache, fallback."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from s2agri.models import compiled_trees
from s2agri.models.baselines import LightGBMPixelClassifier

needs_compiler = pytest.mark.skipif(
    compiled_trees.unavailable_reason() is not None, reason=str(compiled_trees.unavailable_reason())
)


def _data(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5)).astype(np.float32)
    X[rng.random((n, 5)) < 0.1] = np.nan  # missing values take LightGBM's default branches
    X[rng.random((n, 5)) < 0.05] = 0.0
    y = ((np.nan_to_num(X[:, 0]) > 0) ^ (np.nan_to_num(X[:, 1]) > 0.3)).astype(np.uint8)
    return X, y


@pytest.fixture(scope="module")
def model() -> LightGBMPixelClassifier:
    X, y = _data()
    return LightGBMPixelClassifier(n_estimators=30, num_leaves=15, n_jobs=1).fit(X, y)


@needs_compiler
def test_compiled_probabilities_equal_lightgbm(model: LightGBMPixelClassifier) -> None:
    X, _ = _data(2000, seed=1)
    expected = model.booster.predict(X, num_threads=1)
    fresh = LightGBMPixelClassifier(n_estimators=30, n_jobs=1)
    fresh.booster = model.booster
    assert fresh.compile_trees(required=True) is True
    got = fresh.predict_proba(X)
    assert got.shape == (2000,)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert np.isnan(X).any() and (X == 0).any()


@needs_compiler
def test_library_is_cached_private_and_reused(model: LightGBMPixelClassifier) -> None:
    text = model.booster.model_to_string()
    library = compiled_trees.compile_model_text(text, threads=1)
    assert library.parent == Path(os.environ["S2AGRI_CACHE_DIR"]) / compiled_trees.CACHE_SUBDIR
    assert library.name == f"{compiled_trees.library_key(text)}.so"
    assert library.stat().st_mode & 0o077 == 0 and library.parent.stat().st_mode & 0o022 == 0
    before = library.stat().st_mtime_ns
    assert compiled_trees.compile_model_text(text, threads=1) == library  # no second compile
    assert library.stat().st_mtime_ns == before
    assert compiled_trees.library_key(text + " ") != compiled_trees.library_key(text)


@needs_compiler
def test_a_library_others_may_write_is_refused(model: LightGBMPixelClassifier) -> None:
    library = compiled_trees.compile_model_text(model.booster.model_to_string(), threads=1)
    library.chmod(0o666)
    try:
        with pytest.raises(PermissionError, match="not private to this user"):
            compiled_trees.compile_model_text(model.booster.model_to_string(), threads=1)
    finally:
        library.chmod(0o600)


@needs_compiler
def test_compiled_model_pickles_and_reopens(model: LightGBMPixelClassifier) -> None:
    X, _ = _data(500, seed=2)
    fresh = LightGBMPixelClassifier(n_estimators=30, n_jobs=1)
    fresh.booster = model.booster
    fresh.compile_trees()
    first = fresh.predict_proba(X)
    clone = pickle.loads(pickle.dumps(fresh))  # a worker process gets the library path, not the handle
    assert clone.compiled is not None and clone.compiled._predictor is None
    np.testing.assert_array_equal(clone.predict_proba(X), first)


def test_unavailable_falls_back_or_fails_when_required(
    model: LightGBMPixelClassifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compiled_trees, "unavailable_reason", lambda: "no C compiler found (test)")
    fresh = LightGBMPixelClassifier(n_estimators=30, n_jobs=1)
    fresh.booster = model.booster
    assert fresh.compile_trees() is False and fresh.compiled is None
    X, _ = _data(100, seed=3)
    np.testing.assert_array_equal(
        fresh.predict_proba(X), model.booster.predict(X, num_threads=1).astype(np.float32)
    )
    with pytest.raises(RuntimeError, match="no C compiler found"):
        fresh.compile_trees(required=True)


def test_refitting_drops_compiled_trees(model: LightGBMPixelClassifier) -> None:
    X, y = _data(500)
    fresh = LightGBMPixelClassifier(n_estimators=5, num_leaves=7, n_jobs=1)
    fresh.compiled = compiled_trees.CompiledTrees(Path("/nonexistent.so"))
    fresh.fit(X, y)
    assert fresh.compiled is None


@pytest.mark.parametrize("setting", ["auto", "on", "off"])
def test_predict_config_chooses_compiled_trees(
    model: LightGBMPixelClassifier, setting: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from s2agri.tasks.errors import S2AgriInputError
    from s2agri.workflows.config import MappingConfig
    from s2agri.workflows.mapping import prediction_task
    from s2agri.workflows.model_store import TrainedModel

    config = MappingConfig.model_validate({"predict": {"compiled_trees": setting}})
    fresh = LightGBMPixelClassifier(n_estimators=30, n_jobs=1)
    fresh.booster = model.booster
    available = compiled_trees.unavailable_reason() is None
    if setting == "on" and not available:
        with pytest.raises(S2AgriInputError):
            prediction_task(TrainedModel("lightgbm", fresh), config)
        return
    task = prediction_task(TrainedModel("lightgbm", fresh), config)
    assert (task.model.compiled is not None) == (setting != "off" and available)

    monkeypatch.setattr(
        compiled_trees, "unavailable_reason", lambda: "the tl2cgen package is not installed (test)"
    )
    other = LightGBMPixelClassifier(n_estimators=30, n_jobs=1)
    other.booster = model.booster
    if setting == "on":
        with pytest.raises(S2AgriInputError, match=r"predict\.compiled_trees: on, but .*tl2cgen.*set 'off'"):
            prediction_task(TrainedModel("lightgbm", other), config)
    else:
        assert prediction_task(TrainedModel("lightgbm", other), config).model.compiled is None


@needs_compiler
def test_predictor_threads_follow_the_openmp_limit(
    model: LightGBMPixelClassifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A region worker runs with OMP_NUM_THREADS=1: the model still predicts (tl2cgen refuses more)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert compiled_trees.openmp_thread_limit() == 1
    library = compiled_trees.compile_model_text(model.booster.model_to_string(), threads=1)
    code = (
        "import numpy as np, sys; from s2agri.models.compiled_trees import CompiledTrees; "
        f"print(CompiledTrees({str(library)!r}, threads=2).predict(np.zeros((3, 5), np.float32)).shape)"
    )
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("(3,)")
    monkeypatch.setenv("OMP_NUM_THREADS", "3,1")
    assert compiled_trees.openmp_thread_limit() == 3


@needs_compiler
def test_a_failing_compiler_falls_back_to_lightgbm(
    model: LightGBMPixelClassifier, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import tl2cgen
    from tl2cgen.exception import TL2cgenError

    def broken(*args: object, **kwargs: object) -> None:
        raise TL2cgenError("gcc: fatal error: no input files")

    monkeypatch.setenv("S2AGRI_CACHE_DIR", str(tmp_path))  # nothing cached: it must compile
    monkeypatch.setattr(tl2cgen, "export_lib", broken)
    fresh = LightGBMPixelClassifier(n_estimators=30, n_jobs=1)
    fresh.booster = model.booster
    assert fresh.compile_trees() is False and fresh.compiled is None
    with pytest.raises(RuntimeError, match="could not compile the trees: gcc: fatal error"):
        fresh.compile_trees(required=True)
    assert not list((tmp_path / compiled_trees.CACHE_SUBDIR).iterdir())  # no half-built library left
