"""A local folder as the checkpoint's destination (LOCAL_STAGING_DIR, or a folder given)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from dlckpt.errors import UsageError
from dlckpt.runtime.cleanup import (
    note_left_behind,
)
from dlckpt.storage.transfer import (
    MARKER_NAME,
    TransferError,
    crc32c_of_file,
    file_manifest,
)


class LocalDestination:
    """A folder the user named; the run writes only under <folder>/<run prefix>/.

    It removes only run folders it created itself, so a failure can never delete a
    folder that was already there (such as the staged checkpoint, when GCS_TEST_BUCKET
    names LOCAL_STAGING_DIR). I/O errors become one-line TransferErrors, as for GCS.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._created: set[str] = set()

    @classmethod
    def from_setting(cls, value: str, source: str = "GCS_TEST_BUCKET") -> LocalDestination:
        root = Path(value).expanduser().resolve()
        if root.exists() and not root.is_dir():
            raise UsageError(
                f"{source}={value!r}: is a file, not a folder "
                "(expected gs://bucket[/prefix] or an existing local folder)"
            )
        if not root.is_dir():
            raise UsageError(
                f"{source}={value!r}: no such folder "
                "(expected gs://bucket[/prefix] or an existing local folder)"
            )
        if not os.access(root, os.W_OK | os.X_OK):
            raise UsageError(
                f"{source}={value!r}: folder is not writable (expected a writable folder)"
            )
        return cls(root)

    def uri(self, run_prefix: str) -> str:
        return str(self.root / run_prefix)

    def put(self, files: list[Path], run_prefix: str) -> None:
        """Copy, check each copy's size and crc32c, then write the marker (as for GCS).

        TransferError when the run folder already exists (it is left as it is) or a copy
        fails (the partial run folder is removed, and the error names the free space).
        """
        if not run_prefix:
            raise ValueError("put() needs a run prefix")
        target = self.root / run_prefix
        if any(path.resolve().parent == target.resolve() for path in files):
            raise TransferError(
                f"{target}: is the folder the checkpoint was saved in, so copying it there "
                "would overwrite it; set GCS_TEST_BUCKET to another folder "
                "(it is left as it is)"
            )
        exists = TransferError(
            f"{target}: already exists; a run copies only into a new run folder "
            "(it is left as it is)"
        )
        if target.exists():
            raise exists
        # Recorded before the folder is made: an interrupt landing between the two would
        # otherwise leave a folder its own cleanup does not know (CI saw one after a SIGHUP
        # redelivered as the copy began). Run prefixes are unique, so the folder checked
        # absent just above is this run's.
        self._created.add(run_prefix)
        try:
            target.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            self._created.discard(run_prefix)
            raise exists from None
        except OSError as error:
            self._created.discard(run_prefix)
            raise TransferError(f"{target}: {_os_error(error, self.root)}") from None
        try:
            manifest = file_manifest(files)
            for path in files:
                shutil.copy2(path, target / path.name)
            self._check(target, manifest)
            (target / MARKER_NAME).write_text(json.dumps({"files": manifest}))
        except OSError as error:
            self.remove(run_prefix)
            raise TransferError(
                f"{target}: copy failed ({_os_error(error, self.root)}); "
                f"the partial copy was removed, no {MARKER_NAME} marker was written"
            ) from None
        except TransferError:
            self.remove(run_prefix)
            raise

    def fetch(self, run_prefix: str, into: Path) -> list[Path]:
        """Copy a complete run (marker present) into `into`, checking every file."""
        source = self.root / run_prefix
        try:
            manifest = dict(json.loads((source / MARKER_NAME).read_text())["files"])
        except (OSError, ValueError, KeyError) as error:
            raise TransferError(
                f"{source}: no readable {MARKER_NAME} marker, so the copy is incomplete ({error})"
            ) from None
        try:
            into.mkdir(parents=True, exist_ok=True)
            copies = [Path(shutil.copy2(source / name, into / name)) for name in sorted(manifest)]
        except OSError as error:
            raise TransferError(
                f"copying {source} back into {into} failed ({_os_error(error, into)})"
            ) from None
        self._check(into, manifest)
        return copies

    @staticmethod
    def _check(folder: Path, manifest: dict[str, dict[str, Any]]) -> None:
        for name, expected in manifest.items():
            found = {
                "size": (folder / name).stat().st_size,
                "crc32c": crc32c_of_file(folder / name),
            }
            if found != expected:
                raise TransferError(
                    f"{folder / name}: {found['size']} bytes crc32c {found['crc32c']}, "
                    f"expected {expected['size']} bytes crc32c {expected['crc32c']}"
                )

    def remove(self, run_prefix: str) -> None:
        """Remove the run folder if this destination created it; never raises."""
        if not run_prefix or run_prefix not in self._created:
            return
        folder = self.root / run_prefix
        shutil.rmtree(folder, ignore_errors=True)
        if folder.exists():
            note_left_behind(f"{folder} (could not be removed)")


def _os_error(error: OSError, folder: Path) -> str:
    """'No space left on device, 0 B free in /mnt/x' - the OS's reason and the free space."""
    from dlckpt.units import format_size

    reason = error.strerror or type(error).__name__
    try:
        free = f", {format_size(shutil.disk_usage(folder).free)} free in {folder}"
    except OSError:
        free = ""
    return f"{reason}{free}"
