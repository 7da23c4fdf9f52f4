"""Any element tf.data yields, as named numpy leaves: nested structures, strings, ragged, sparse.

The digest of the round trip and the byte counts of the estimator read elements through
this one function, so both see the same structure: dict keys (sorted), tuple and list
indices, namedtuple field names, and the components of composite tensors (a RaggedTensor's
flat values and every level of row splits, a SparseTensor's indices, values and dense
shape). Leaf names carry the composite's kind, so a dense tensor and a ragged one with
the same values do not compare equal.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _join(path: str, name: str) -> str:
    return f"{path}/{name}" if path else name


def _composite_components(value: Any) -> list[tuple[str, Any]] | None:
    """(name, dense component) of a composite tensor, or None when `value` is not one."""
    kind = type(value).__name__
    if kind in ("RaggedTensor", "RaggedTensorValue"):
        splits = [(f"row_splits_{i}", s) for i, s in enumerate(value.nested_row_splits)]
        return [("ragged/flat_values", value.flat_values)] + [
            (f"ragged/{name}", s) for name, s in splits
        ]
    if kind in ("SparseTensor", "SparseTensorValue"):
        return [
            ("sparse/indices", value.indices),
            ("sparse/values", value.values),
            ("sparse/dense_shape", value.dense_shape),
        ]
    if hasattr(value, "_type_spec") and not hasattr(value, "numpy"):
        # Any other CompositeTensor: TensorFlow's own expansion into its dense components.
        from dlckpt.runtime.tf_import import import_tensorflow

        parts = import_tensorflow().nest.flatten(value, expand_composites=True)
        return [(f"{kind.lower()}/{i}", part) for i, part in enumerate(parts)]
    return None


def element_leaves(element: Any, path: str = "") -> list[tuple[str, np.ndarray]]:
    """[(key path, numpy array)] for every dense leaf of `element`, in a stable order.

    Strings come back as numpy object arrays of `bytes`. Raises TypeError naming the path
    for a leaf that is neither a tensor, a numpy value nor a Python scalar.
    """
    if isinstance(element, dict):
        leaves: list[tuple[str, np.ndarray]] = []
        for key in sorted(element, key=str):
            leaves.extend(element_leaves(element[key], _join(path, str(key))))
        return leaves
    if isinstance(element, tuple) and hasattr(element, "_fields"):  # namedtuple
        leaves = []
        for name in element._fields:
            leaves.extend(element_leaves(getattr(element, name), _join(path, name)))
        return leaves
    if isinstance(element, (tuple, list)):
        leaves = []
        for index, item in enumerate(element):
            leaves.extend(element_leaves(item, _join(path, str(index))))
        return leaves
    components = _composite_components(element)
    if components is not None:
        leaves = []
        for name, component in components:
            leaves.extend(element_leaves(component, _join(path, name)))
        return leaves
    if hasattr(element, "numpy"):
        element = element.numpy()
    if isinstance(element, (np.ndarray, np.generic, bytes, str, int, float, bool)):
        return [(path or "<element>", np.asarray(element))]
    raise TypeError(
        f"element leaf {path or '<element>'!r} is a {type(element).__name__}, expected a "
        "tensor, a RaggedTensor, a SparseTensor or a nested dict/tuple of them"
    )


def leaf_bytes(array: np.ndarray) -> int:
    """Bytes a leaf holds: a string array counts the length of each string, others nbytes."""
    if array.dtype == object:
        return sum(len(bytes(item)) for item in array.reshape(-1))
    return int(array.nbytes)


def element_bytes(element: Any) -> int:
    """Bytes of every leaf of `element` (see element_leaves), composite components included."""
    return sum(leaf_bytes(array) for _, array in element_leaves(element))


def leading_dimension(element: Any) -> int:
    """Samples in a batch: the first dimension of the first leaf (1 for unbatched scalars).

    For a RaggedTensor the first leaf is its flat values, so the row splits give the rows.
    """
    leaves = element_leaves(element)
    if not leaves:
        return 1
    name, first = leaves[0]
    if name.endswith("ragged/flat_values"):
        splits = dict(leaves).get(name.replace("flat_values", "row_splits_0"))
        if splits is not None and splits.shape and splits.shape[0] > 0:
            return max(int(splits.shape[0]) - 1, 1)
    if name.endswith("sparse/indices"):
        shape = dict(leaves).get(name.replace("indices", "dense_shape"))
        if shape is not None and shape.size:
            return max(int(shape.reshape(-1)[0]), 1)
    return max(int(first.shape[0]), 1) if first.ndim > 0 else 1
