"""`python -m dlckpt COMMAND …`: the same as the `dlckpt` console command."""

from dlckpt.cli.main import entry

entry()
