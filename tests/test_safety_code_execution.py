"""Safety: no input runs code.

Issue 18's class of fault 1: pickled (object) arrays in an EOPatch and pickled model files are refused before anything unpickles them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from eolearn.core import EOPatch
from test_workflows import FAST_CONFIG, config_file, model, region  # noqa: F401 (fixtures)

from s2agri.models.registry import load_model
from s2agri.tasks.safe_io import npy_dtype, pickled_arrays
from s2agri.workflows import cli


def test_predict_refuses_a_box_with_a_pickled_array(
    region: Path, model: Path, tmp_path: Path, capsys
) -> None:
    """An object array in an EOPatch is a pickle: loading it could run code. It is refused in one line
    before any work, and eo-learn's reader refuses to unpickle it anyway."""
    import gzip
    import shutil

    box = tmp_path / "boxes" / "box-evil"
    shutil.copytree(region / "eopatches" / "box-003", box)
    marker = tmp_path / "ran"
    clp = next(box.glob("data/CLP.npy*"))
    clp.unlink()
    payload = np.array([_Exploit(str(marker))], dtype=object)
    with gzip.open(box / "data" / "CLP.npy.gz", "wb") as handle:
        np.save(handle, payload, allow_pickle=True)
    out = tmp_path / "run"
    code = cli.main(["predict", str(box), "--model", str(model), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert (
        code == 2 and "\n" not in err and "box-evil holds object arrays" in err and "data/CLP.npy.gz" in err
    )
    assert not marker.exists() and not out.exists()
    with pytest.raises(ValueError, match="allow_pickle=False"):
        EOPatch.load(str(box))
    assert not marker.exists()


class _Exploit:
    """Unpickling this touches a file: the stand-in for running code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_random_forest_refuses_pickles(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    pickled = tmp_path / "model.joblib"
    import joblib

    joblib.dump(_Exploit(str(marker)), pickled)
    with pytest.raises(ValueError, match="is a pickle, which can run code"):
        load_model("random-forest", pickled)
    assert not marker.exists()
    # an .npz smuggling an object array is refused by np.load(allow_pickle=False)
    crafted = tmp_path / "crafted.npz"
    np.savez(
        crafted, format=np.array("s2agri-forest-1"), params=np.array([_Exploit(str(marker))], dtype=object)
    )
    with pytest.raises(ValueError, match="allow_pickle=False"):
        load_model("random-forest", crafted)
    assert not marker.exists()
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot be read as an s2agri forest file"):
        load_model("random-forest", tmp_path / "junk.npz")


def test_pickled_arrays_are_found_from_their_headers_alone(tmp_path: Path) -> None:
    import gzip

    marker = tmp_path / "ran"
    (tmp_path / "data").mkdir()
    np.save(tmp_path / "data" / "GOOD.npy", np.zeros((2, 3), np.uint16))
    with gzip.open(tmp_path / "data" / "EVIL.npy.gz", "wb") as handle:
        np.save(handle, np.array([_Exploit(str(marker))], dtype=object), allow_pickle=True)
    (tmp_path / "data" / "BROKEN.npy").write_bytes(b"not an npy file")
    assert npy_dtype(tmp_path / "data" / "GOOD.npy") == np.uint16
    assert npy_dtype(tmp_path / "data" / "EVIL.npy.gz").hasobject
    assert pickled_arrays(tmp_path) == ["data/BROKEN.npy", "data/EVIL.npy.gz"]
    assert not marker.exists()
