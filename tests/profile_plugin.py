"""Where the suite's time goes: per test, its wall time and CPU (this process and children).

    PROFILE_LOG=/tmp/profile.jsonl PYTHONPATH=tests .nox/tests/bin/pytest -p profile_plugin \
        -q -n 4 --dist=loadgroup -m "not user_env and not accuracy"

Each test (setup, call, teardown) appends one JSON line to PROFILE_LOG: its id, the xdist
worker, wall start/end (s since the epoch) and CPU seconds from getrusage (self +
children: a script's process and its restore child count). Summarize with
`python tests/profile_plugin.py /tmp/profile.jsonl`. Not loaded by `make test`.
"""

from __future__ import annotations

import collections
import json
import os
import resource
import sys
import time
from collections.abc import Iterator

import pytest


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    start, cpu = time.time(), _cpu_seconds()
    yield
    line = {"id": item.nodeid, "worker": os.environ.get("PYTEST_XDIST_WORKER"), "t0": start,
            "t1": time.time(), "cpu": _cpu_seconds() - cpu}  # fmt: skip
    with open(os.environ.get("PROFILE_LOG", "profile.jsonl"), "a") as out:
        out.write(json.dumps(line) + "\n")


def summary(path: str) -> str:
    """Span, CPU seconds in all, and the files that used the most CPU."""
    with open(path) as lines_in:
        rows = [json.loads(line) for line in lines_in]
    span = max(r["t1"] for r in rows) - min(r["t0"] for r in rows)
    by_file: collections.Counter[str] = collections.Counter()
    for row in rows:
        by_file[row["id"].split("::")[0]] += row["cpu"]
    lines = [f"{len(rows)} tests, {span:.0f} s wall, {sum(by_file.values()):.0f} CPU-seconds"]
    lines += [f"{cpu:7.1f}  {name}" for name, cpu in by_file.most_common(12)]
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary(sys.argv[1]))
