"""Shuffle strategies whose iterator checkpoint is kilobytes, measured side by side."""
