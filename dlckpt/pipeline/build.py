"""How a config's `dataloader` node becomes the user's tf.data.Dataset (or one clear line).

The node's `_target_` names a function (module.function on PYTHONPATH); the rest of the
node are its keyword arguments. Every failure on the user's side is a UsageError (exit 2)
naming the target and what was expected.
"""

from __future__ import annotations

from typing import Any

from dlckpt.errors import UsageError
from dlckpt.runtime.tf_import import import_tensorflow


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
