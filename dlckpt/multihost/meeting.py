"""The bucket as the meeting point of a launched job's processes: no collective runtime.

Under `<run prefix>/` (gs://bucket/prefix/dlckpt-multi-host-<run id>/) each process writes
small JSON objects beside its checkpoint:

- `meeting/ready-{i}-of-{n}`: it reached the save (a barrier: every process then saves at
  once); created only if absent, so two processes claiming index i are told apart;
- `meeting/ABORT`: a process failed before its save, with why (its peers stop waiting);
- `meeting/report-{i}-of-{n}.json`: its result, which process 0 gathers into one verdict.

Polling costs one list request every POLL_SECONDS per waiting process. Process 0 removes
the run prefix after the verdict; it is the tool's own, nothing else is touched.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

from dlckpt.errors import UsageError
from dlckpt.multihost.layout import Process
from dlckpt.multihost.worker import PeerMissing
from dlckpt.runtime.cleanup import note_left_behind

POLL_SECONDS = 1.0
QUICK_SECONDS = 5.0  # each write on the way out after a signal: one try, this long
FOLDER = "meeting"


class DuplicateProcess(UsageError):
    """Two processes of one run claim the same index: exit 2; this one sends no result
    (it would stand in for the other's)."""


class Meeting:
    """One process's view of the run's meeting objects in `destination`'s bucket
    (a storage.gcs.GcsDestination) under `run_prefix`.

    A little over the house's ~200 lines on purpose: the barrier, the ABORT, the reports
    and their removal all read one listing of the same folder under one rule (an ABORT is
    read before anything is counted), which is easier to keep true in one place.
    """

    def __init__(self, destination: Any, run_prefix: str, process: Process) -> None:
        self.destination = destination
        self.run_prefix = run_prefix
        self.process = process
        self._key = destination.location.key(run_prefix, FOLDER)
        self.duplicate = False  # another process of this run claimed this index first
        self.all_reported = False  # gather() found every process's result

    def uri(self) -> str:
        return self.destination.location.uri(self.run_prefix)

    def _put(
        self, name: str, payload: dict[str, Any], *, only_new: bool = False, quick: bool = False
    ) -> None:
        """Write `payload` as meeting/`name`; `only_new`: refused by the bucket itself when
        the object exists (ifGenerationMatch=0: two processes cannot both create it);
        `quick`: one try of QUICK_SECONDS, as on the way out after a signal."""
        blob = self.destination.bucket.blob(f"{self._key}/{name}")
        blob.upload_from_string(
            json.dumps(payload), content_type="application/json",
            timeout=QUICK_SECONDS if quick else self.destination.request_timeout,
            retry=None if quick else self.destination._retry(),
            if_generation_match=0 if only_new else None,
        )  # fmt: skip

    def _names(self) -> dict[str, Any]:
        listing = self.destination.client.list_blobs(
            self.destination.bucket, prefix=f"{self._key}/",
            timeout=self.destination.request_timeout, retry=self.destination._retry(),
        )  # fmt: skip
        return {blob.name.rsplit("/", 1)[-1]: blob for blob in listing}

    def report_name(self, index: int) -> str:
        return f"report-{index}-of-{self.process.count}.json"

    def ready_name(self, index: int) -> str:
        return f"ready-{index}-of-{self.process.count}"

    def check_counts(self, names: dict[str, Any]) -> None:
        """UsageError when a mark or result in the meeting says another process count:
        processes that disagree on it would each check a job that is not the one running."""
        for name in names:
            if not name.startswith(("ready-", "report-")):
                continue
            index, count = name.removesuffix(".json").split("-")[1::2]
            if int(count) != self.process.count:
                raise UsageError(
                    f"process count: process {index} of this run says the job has {count} "
                    f"processes, process {self.process.index} says {self.process.count} "
                    f"({self.uri()}/{FOLDER}/{name}): every process must be started with the "
                    "same count (WORLD_SIZE, SLURM_NTASKS, --process-count)"
                )

    def check_unused(self) -> None:
        """UsageError when this process's own ready mark or report is already there: an
        earlier run with this run id left it, or a twin of this run took the index first.
        Either way the run cannot be trusted: an ABORT stops it (process 0's verdict then
        says so) before stale marks could let the barrier pass early."""
        own = {self.ready_name(self.process.index), self.report_name(self.process.index)}
        stale = sorted(own & set(self._names()))
        if stale:
            text = (
                f"--run-id: {self.uri()}/{FOLDER}/ holds {', '.join(stale)} of process "
                f"{self.process.index}: another process of this run was started with the same "
                "index, or an earlier run used this run id: give every process its own index "
                "and every run a new --run-id (or remove that folder)"
            )
            with contextlib.suppress(Exception):  # the run it would join cannot be trusted
                self.abort(text[:200])
            raise UsageError(text)

    def _abort_payload(self, names: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The ABORT's {"process", "why", "final"}, or None when no process stopped the run."""
        names = self._names() if names is None else names
        if "ABORT" not in names:
            return None
        return dict(json.loads(names["ABORT"].download_as_bytes()))

    def aborted(self, names: dict[str, Any] | None = None) -> str | None:
        """Who stopped the run and why ("process 1 failed (…)"), or None."""
        why = self._abort_payload(names)
        return None if why is None else f"process {why['process']} failed ({why['why']})"

    def abort(self, why: str, *, quick: bool = False, final: bool = False) -> None:
        """Tell the peers waiting at the barrier to stop: this process cannot save. `final`:
        process 0 is gone or done, so no verdict will gather the peers' results."""
        payload = {"process": self.process.index, "why": why, "final": final}
        self._put("ABORT", payload, quick=quick)

    def final_abort(self) -> str | None:
        """Why the run ended without reading this process's result (process 0 stopped, or
        gave its verdict before this process came), or None."""
        why = self._abort_payload()
        return str(why["why"]) if why is not None and why.get("final") else None

    def interrupted(self, why: str, *, keep: bool) -> None:
        """On the way out after a signal, within a few seconds and never raising: the peers
        at the barrier stop; a process other than 0 sends a result saying so (process 0 then
        names it instead of waiting out --gather-timeout); process 0's ABORT is final (no
        verdict will read the peers' results) and stays, with the meeting's other objects
        removed."""
        with contextlib.suppress(Exception):
            self.abort(why, quick=True, final=self.process.index == 0)
            if self.process.index != 0:
                result = {"index": self.process.index, "host": self.process.host,
                          "passed": False, "failure": why, "exit_code": 1}  # fmt: skip
                self._put(self.report_name(self.process.index), result, quick=True)
            else:  # peers may be mid-save: their checkpoints stay theirs to remove
                self.remove(keep_checkpoints=keep, everyone_reported=False)

    def barrier(self, limit_seconds: float) -> None:
        """Mark this process ready, then wait until all are (or a peer aborted). Raises
        PeerMissing naming the processes not ready within `limit_seconds`, or the abort;
        DuplicateProcess when another process already marked this index ready; UsageError
        when a peer's mark says another process count."""
        from google.api_core.exceptions import PreconditionFailed

        try:
            self._put(self.ready_name(self.process.index), {"process": self.process.index},
                      only_new=True)  # fmt: skip
        except PreconditionFailed:
            self.duplicate = True
            raise DuplicateProcess(
                f"process index {self.process.index}: another process of this run already "
                f"claimed it ({self.uri()}/{FOLDER}/{self.ready_name(self.process.index)}): "
                "every process needs its own index (RANK, SLURM_PROCID, --process-index)"
            ) from None
        self._wait(
            lambda names: {int(n.split("-")[1]) for n in names if n.startswith("ready-")},
            limit_seconds, "reach the save",
        )  # fmt: skip

    def _wait(
        self, found: Callable[[dict[str, Any]], set[int]], limit_seconds: float, what: str
    ) -> dict[str, Any]:
        deadline = time.monotonic() + limit_seconds
        while True:
            names = self._names()
            self.check_counts(names)
            # An abort first: a late process must not pass on marks a stopped run left.
            why = self.aborted(names)
            if why is not None:
                raise PeerMissing(f"stopped before its save: {why}")
            if len(found(names)) >= self.process.count:
                return names
            if time.monotonic() > deadline:
                missing = sorted(set(range(self.process.count)) - found(names))
                text = f"processes {missing} did not {what} within {limit_seconds:.0f} s"
                with contextlib.suppress(Exception):  # a late peer must not pass on our mark
                    self.abort(text)
                raise PeerMissing(text)
            time.sleep(POLL_SECONDS)

    def send_report(self, result: dict[str, Any]) -> str:
        """Put this process's result where process 0 gathers it; returns its gs:// URI."""
        name = self.report_name(self.process.index)
        self._put(name, result)
        return f"{self.uri()}/{FOLDER}/{name}"

    def gather(
        self, limit_seconds: float, *, but_self: bool = False
    ) -> tuple[dict[int, dict[str, Any]], list[int]]:
        """Every process's result (`but_self`: the peers'), waiting up to `limit_seconds`
        for all; returns (results by index, the indices that sent none in time)."""
        wanted = {
            self.report_name(i): i
            for i in range(self.process.count)
            if not (but_self and i == self.process.index)
        }
        deadline = time.monotonic() + limit_seconds
        while True:
            names = self._names()
            self.check_counts(names)
            if set(wanted) <= set(names) or time.monotonic() > deadline:
                break
            time.sleep(POLL_SECONDS)
        results = {
            index: json.loads(names[name].download_as_bytes())
            for name, index in wanted.items()
            if name in names
        }
        missing = sorted(set(wanted.values()) - set(results))
        self.all_reported = not missing
        return results, missing

    def remove(self, *, keep_checkpoints: bool, everyone_reported: bool = True) -> None:
        """Delete the meeting objects, and (unless `keep_checkpoints`, --keep) everything
        else under the run prefix: a checkpoint a process could not remove itself. When a
        peer may still be running (not `everyone_reported`), its checkpoint is its own to
        remove, and the ABORT that stops it stays, noted as left."""
        if everyone_reported and not keep_checkpoints:
            self.destination.remove(self.run_prefix)
            return
        names = self._names()
        for name in names:
            if everyone_reported or name != "ABORT":
                with contextlib.suppress(Exception):  # cleanup is best effort, as remove() is
                    self.destination.bucket.blob(f"{self._key}/{name}").delete(timeout=10)
        if not everyone_reported and "ABORT" in names:
            with contextlib.suppress(Exception):  # the run is over: late peers send nothing
                why = self._abort_payload(names)
                self.abort(str(why["why"]) if why else "", quick=True, final=True)
            note_left_behind(
                f"{self.uri()}/{FOLDER}/ABORT stays so that the processes still running stop; "
                f"remove the run's folder once they have: `gcloud storage rm -r {self.uri()}/`"
            )

    def forget_own(self) -> None:
        """Remove this process's ready mark: a run already over will not read it."""
        with contextlib.suppress(Exception):
            blob = self.destination.bucket.blob(
                f"{self._key}/{self.ready_name(self.process.index)}"
            )
            blob.delete(timeout=QUICK_SECONDS)
