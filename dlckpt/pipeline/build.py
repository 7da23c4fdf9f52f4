"""How a config's `dataloader` node becomes the user's tf.data.Dataset (or one clear line).

The node's `_target_` names a function (module.function on PYTHONPATH); the rest of the
node are its keyword arguments. Every failure on the user's side is a UsageError (exit 2)
naming the target and what was expected.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

from dlckpt.errors import UsageError
from dlckpt.runtime.tf_import import import_tensorflow


def _missing_module(error: BaseException) -> str | None:
    """The top-level name of a module that is not installed, from anywhere in the error's
    chain (hydra wraps the ImportError of the user's module in its own errors), or None.
    A module of this package or of the user's own missing file is not "not installed"
    when its top-level package imports: then it is a typo, reported as one."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ModuleNotFoundError) and current.name:
            top = current.name.split(".")[0]
            if importlib.util.find_spec(top) is None:
                return top
        current = current.__cause__ or current.__context__
    return None


def instantiate_dataset(dataloader_cfg: Any) -> Any:
    """Call the config's `dataloader._target_` with the rest of the node as keyword arguments."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    # Import TensorFlow our way (quiet) before the user's module imports it its way.
    tf = import_tensorflow()
    target = dataloader_cfg.get("_target_")
    try:
        dataset = instantiate(dataloader_cfg, _convert_="all")
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        missing = _missing_module(exc)
        # The target's own package missing is a PYTHONPATH (or spelling) matter, answered
        # below; a package the target imports is one the user's environment has and ours not.
        if missing is not None and missing != str(target).split(".")[0]:
            raise UsageError(
                f"dataloader._target_={target!r} needs the module {missing!r}, which the "
                f"environment running this ({sys.prefix}) does not have: run in your training "
                "environment (`make … PYTHON=/path/to/its/python`, or `pip install` this tool "
                "there: README, In your own environment)"
            ) from None
        if isinstance(cause, (ImportError, AttributeError)) or "Error locating target" in str(exc):
            raise UsageError(
                f"dataloader._target_={target!r} does not import "
                f"(expected module.function on PYTHONPATH): {' '.join(str(cause).split())[:300]}"
            ) from None
        if isinstance(cause, TypeError):
            # A misspelled or extra key in the dataloader node: the function's own message
            # names the argument.
            raise UsageError(
                f"dataloader: {target} does not accept these settings "
                f"(expected its keyword arguments): {' '.join(str(cause).split())[:300]}"
            ) from None
        # The builder itself raised: the user's code, so bad input rather than our failure.
        raise UsageError(
            f"dataloader: {target} raised {type(cause).__name__} while building the dataset: "
            f"{' '.join(str(cause).split())[:300]}"
        ) from None
    if not isinstance(dataset, tf.data.Dataset):
        raise UsageError(
            f"dataloader._target_={target!r} returned {type(dataset).__name__}, "
            "expected a tf.data.Dataset"
        )
    return dataset
