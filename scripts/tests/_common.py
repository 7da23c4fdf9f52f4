"""What the three test scripts share: the command line, the estimate and preflight, one run.

Each script's body is a command of the installed `dlckpt` package (`dlckpt.cli.small_buffer`,
`.local_staging`, `.original`; also `dlckpt small-buffer …` once pip-installed), read as
its steps: parse and load the config (`common_parser`, `parse_args`, `load_from_args`),
measure and refuse a save that cannot fit (`estimate_and_preflight`), open where the
checkpoint goes (`open_destination`), run the round trip (`run_round_trip`) and `finish`
with the verdict, the report and the exit code; `run_main` turns every outcome into one line
and an exit code. These names are re-exported here for a script of your own built the same
way. A change goes to the package's folder, not here.
"""

from dlckpt.cli.common import (
    add_estimate_args,
    common_parser,
    load_from_args,
    parse_args,
    run_main,
)
from dlckpt.config import shuffle_buffer_size, with_buffer_size
from dlckpt.preflight.run import estimate_and_preflight, finish_estimate_only
from dlckpt.roundtrip.scenario import finish, open_destination, run_round_trip
from dlckpt.runtime.signals import exit_process
from dlckpt.storage.transfer import new_run_prefix

__all__ = [
    "add_estimate_args",
    "common_parser",
    "estimate_and_preflight",
    "exit_process",
    "finish",
    "finish_estimate_only",
    "load_from_args",
    "new_run_prefix",
    "open_destination",
    "parse_args",
    "run_main",
    "run_round_trip",
    "shuffle_buffer_size",
    "with_buffer_size",
]
