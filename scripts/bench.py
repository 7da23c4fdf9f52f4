#!/usr/bin/env python3
"""Benchmarks: checkpoint save/restore and GCS transfers against the machine's raw limits.

Measures side by side, as min / median / max over repeats: (1) tf.train.Checkpoint save and
restore vs a raw fsync'd write and read of the same bytes; (2) the verified GCS upload and
download vs plain ones on the embedded server; (3) checkpoint bytes, save/restore seconds
and peak RSS over buffer sizes spanning 32x, with fitted per-element slopes, and checks the
preflight's host-RAM row against the measured memory (exit 1 beyond 20%); (4) --estimate-only
vs the time to fill each preset's buffer; (5) with --suite, `make test` and its slowest tests.
Then runs scripts/bench_estimate.py and scripts/bench_catch_rate.py (and bench_tf_gcs.py
when present) as steps. Writes bench/results.json, docs/benchmarks.md and docs/benchmarks.png.

    make bench                                   # everything but the suite (~15 min idle)
    python scripts/bench.py --quick              # small buffers, one repeat, no steps
    python scripts/bench.py --suite              # also time `make test`
    python scripts/bench.py --render-only        # redraw docs/ from bench/results.json
    python scripts/bench.py --parts answer --merge   # re-measure one part, keep the rest

Exit codes: 0 done, 1 the RAM row disagrees or a step failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before anything imports TensorFlow

from dlckpt.bench.render import render  # noqa: E402
from dlckpt.bench.runner import Options, measure, merged, problems, write_results  # noqa: E402


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny buffers, 1 repeat, no steps")
    parser.add_argument("--suite", action="store_true", help="also time `make test` (slow)")
    parser.add_argument("--render-only", action="store_true", help="only redraw docs/")
    parser.add_argument("--no-steps", action="store_true", help="skip the other bench scripts")
    parser.add_argument(
        "--parts", nargs="+", choices=("limits", "scaling", "answer"),
        help="measure only these parts (default: all; limits = 1 and 2)",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, help="repeats of parts 1 and 2 (default 5)")
    parser.add_argument("--sizes", type=int, nargs="+", help="buffer sizes for part 3")
    parser.add_argument("--presets", nargs="+", help="presets for part 4 (default: conf/*.yaml)")
    parser.add_argument("--catch-runs", type=int, help="round trips per pipeline (catch rate)")
    parser.add_argument(
        "--merge", action="store_true",
        help="keep the parts of an existing --out file that this run does not measure",
    )  # fmt: skip
    parser.add_argument("--note", help="add this sentence to results.json's notes (with --merge)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    args = parser.parse_args(argv)
    for name in ("repeats", "catch_runs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} {value}: expected a positive integer, e.g. 3")
    if args.sizes is not None and (len(set(args.sizes)) < 2 or min(args.sizes) < 1):
        parser.error(f"--sizes {args.sizes}: expected two or more distinct positive sizes")
    return args


def options_from(args: argparse.Namespace, argv: Sequence[str]) -> Options:
    changes = {
        key: value
        for key, value in {
            "repeats": args.repeats, "sizes": args.sizes, "presets": args.presets,
            "catch_runs": args.catch_runs, "parts": args.parts,
        }.items()
        if value is not None
    }  # fmt: skip
    if args.no_steps:
        changes["steps"] = False
    changes["suite"] = args.suite
    changes["command"] = " ".join(["python scripts/bench.py", *argv]) if argv else "make bench"
    if args.quick:
        return Options.quick_defaults(**changes)
    return Options(**changes)


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds, so the scratch folders are removed


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    if args.render_only:
        if not args.out.exists():
            print(f"✗ {args.out}: no results to render; run make bench first", file=sys.stderr)
            return 2
    else:
        options = options_from(args, argv)
        earlier = json.loads(args.out.read_text()) if args.merge and args.out.exists() else None
        target = args.out if earlier is None else args.out.with_suffix(".partial.json")
        results = measure(options, target, say=lambda line: print(line, flush=True))
        if earlier is not None:
            results = merged(earlier, results)
            if args.note:
                results["notes"] = [*results.get("notes", []), args.note]
            target.unlink(missing_ok=True)
        write_results(results, args.out)
        print(f"Wrote {args.out}")
    page, picture = render(args.out, args.docs)
    print(f"Wrote {page}" + (f" and {picture}" if picture else " (no plot: scaling not measured)"))
    if args.render_only:
        return 0
    found = problems(results)
    ram = (results.get("scaling") or {}).get("ram")
    if ram:
        print(
            f"Preflight host-RAM row at buffer {ram['buffer']:,}: {ram['estimate_ram_bytes']:,} B;"
            f" measured peak RSS {ram['measured_peak_rss_bytes']:,} B, of which the buffer "
            f"{ram['measured_buffer_bytes']:,.0f} B (process with an empty buffer "
            f"{ram['process_baseline_bytes']:,.0f} B)"
        )
    for problem in found:
        print(f"✗ {problem}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
