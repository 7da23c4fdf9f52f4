"""Host memory a buffered element costs: the C allocator's own count, and the save's share.

The preflight's host-RAM row used to count each buffered element's tensor bytes only.
A tensor in memory also costs its allocator header and alignment, and saving an
iterator builds working memory per element (its keys and per-tensor records). For
elements of a few dozen bytes that was 100x more than their data:
`python scripts/bench_ram.py` measures it (see SAVE_WORKING_BYTES_PER_ELEMENT).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

# What a save adds at its peak, per buffered element and per dense tensor in it (bytes):
# a real fill-and-save's RSS high-water mark per element (two buffers, fresh processes)
# minus the allocator's bytes per held element, on shapes of 1 to 24 tensors and 14 B to
# 8 KB of data per element. `python scripts/bench_ram.py` measures it and prints the row
# beside the measurement for every shape (README, "How long it takes").
SAVE_WORKING_BYTES_PER_ELEMENT = 1000
SAVE_WORKING_BYTES_PER_TENSOR = 140
# An empty slot of the shuffle buffer (a stream shorter than the buffer): its save records
# cost ~800 B of peak RSS each (short_stream in scripts/bench_ram.py).
SAVE_WORKING_BYTES_PER_SLOT = 800


class _MallInfo2(ctypes.Structure):
    # struct mallinfo2's fields, in order (malloc.h), every one a size_t
    _FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks")
    _fields_ = [(name, ctypes.c_size_t) for name in (*_FIELDS, "uordblks", "fordblks", "keepcost")]


@functools.cache
def _mallinfo2() -> object | None:
    """glibc's mallinfo2 (2.33+), or None on another C library."""
    name = ctypes.util.find_library("c")
    try:
        function = ctypes.CDLL(name or "libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    function.restype = _MallInfo2
    function.argtypes = []
    return function


def allocated_bytes() -> int | None:
    """Bytes the C allocator has handed out and not yet freed, all threads' arenas and
    mmapped blocks together (glibc mallinfo2: uordblks + hblkhd); None without glibc.

    TensorFlow's CPU tensors come from this allocator, so the difference across an
    iterator filling its shuffle buffer is what the held elements cost in memory, with
    their headers and alignment; Python's own small objects are not counted.
    """
    function = _mallinfo2()
    if function is None:
        return None
    info = function()  # type: ignore[operator]
    return int(info.uordblks + info.hblkhd)


def save_working_bytes(tensors_per_element: int) -> int:
    """Working memory a save adds at its peak per buffered element (bytes); see above."""
    return SAVE_WORKING_BYTES_PER_ELEMENT + SAVE_WORKING_BYTES_PER_TENSOR * tensors_per_element
