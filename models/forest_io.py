"""A scikit-learn random forest as plain numeric arrays: a model file that cannot run code.

joblib/pickle files execute code when loaded, so a model folder from someone else could take over the
machine. :func:`save_forest` writes every tree's node table (a structured numeric array), its leaf
values and the forest's parameters (JSON text) into one ``.npz``; :func:`load_forest` reads it with
``allow_pickle=False`` and rebuilds the estimator, whose predictions are identical to the original's.
The node table's layout belongs to the scikit-learn version that wrote it: another version that lays
nodes out differently is refused with the advice to retrain.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.tree import DecisionTreeClassifier
from sklearn.tree._tree import Tree

FORMAT = "s2agri-forest-1"


def save_forest(estimator: RandomForestClassifier, file: Any) -> None:
    """Write a fitted single-output ``estimator`` to ``file`` (a path or binary file) as ``.npz``."""
    if estimator.n_outputs_ != 1:
        raise ValueError("only single-output forests can be saved")
    arrays: dict[str, Any] = {
        "format": np.array(FORMAT),
        "params": np.array(json.dumps(estimator.get_params())),
        "classes": np.asarray(estimator.classes_),
        "n_features": np.array(estimator.n_features_in_),
    }
    for i, tree in enumerate(estimator.estimators_):
        state = tree.tree_.__getstate__()
        arrays[f"nodes_{i}"] = state["nodes"]
        arrays[f"values_{i}"] = state["values"]
        arrays[f"max_depth_{i}"] = np.array(state["max_depth"])
    np.savez(file, **arrays)


def load_forest(path: str | os.PathLike[str]) -> RandomForestClassifier:
    """The forest written by :func:`save_forest`; a ``ValueError`` names what is wrong with the file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if "format" not in data.files or str(data["format"]) != FORMAT:
                raise KeyError(f"no {FORMAT} marker")
            params = json.loads(str(data["params"]))
            classes = data["classes"]
            n_features = int(data["n_features"])
            n_trees = sum(1 for name in data.files if name.startswith("nodes_"))
            trees = [
                (data[f"nodes_{i}"], data[f"values_{i}"], int(data[f"max_depth_{i}"])) for i in range(n_trees)
            ]
    except (OSError, ValueError, zipfile.BadZipFile, KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} cannot be read as an s2agri forest file ({exc})") from exc
    forest = RandomForestClassifier(**params)
    tree_params = {name: params[name] for name in forest.estimator_params if name in params}
    n_classes = np.array([classes.size], dtype=np.intp)
    estimators = []
    for nodes, values, max_depth in trees:
        tree = DecisionTreeClassifier(**tree_params)
        table = Tree(n_features, n_classes, 1)
        try:
            table.__setstate__(
                {"max_depth": max_depth, "node_count": len(nodes), "nodes": nodes, "values": values}
            )
        except (ValueError, TypeError) as exc:
            raise ValueError(
                f"{path} was written by a scikit-learn with another tree layout ({exc}): train the model again"
            ) from exc
        tree.tree_ = table
        tree.n_features_in_ = n_features
        tree.n_outputs_ = 1
        tree.classes_ = classes
        tree.n_classes_ = int(classes.size)
        tree.max_features_ = n_features
        estimators.append(tree)
    forest.estimators_ = estimators
    forest.estimator_ = DecisionTreeClassifier(**tree_params)
    forest.n_features_in_ = n_features
    forest.n_outputs_ = 1
    forest.classes_ = classes
    forest.n_classes_ = int(classes.size)
    return forest


def is_pickle_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a joblib/pickle file (which loading would execute), judged by its name."""
    return Path(path).suffix in (".joblib", ".pkl", ".pickle")
