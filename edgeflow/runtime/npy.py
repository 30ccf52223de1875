"""Reading a .npy array from bytes that may be hostile (numpy only, never unpickles).

``np.load`` trusts the header: a 100-byte file that declares shape (10**12,) makes numpy allocate
the whole array before it finds the data missing (MemoryError, or gigabytes touched). Here the
header is parsed first and the declared size must fit the bytes actually present.
"""

from __future__ import annotations

import io
import math

import numpy as np

from edgeflow.errors import DataError


def read_npy(data: bytes, *, what: str) -> np.ndarray:
    """The array stored in ``data`` (.npy bytes); :class:`DataError` naming ``what`` otherwise."""
    f = io.BytesIO(data)
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, _, dtype = fmt.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
        if dtype.hasobject:
            raise ValueError("it holds Python objects (pickles are never loaded)")
        need = math.prod(shape) * dtype.itemsize
        if need > len(data) - f.tell():
            raise ValueError(f"its header declares {shape} {dtype} ({need} bytes) but only "
                             f"{len(data) - f.tell()} bytes follow")
        f.seek(0)
        return fmt.read_array(f, allow_pickle=False)
    except (ValueError, EOFError, OSError, TypeError, SyntaxError) as exc:
        raise DataError(f"{what} is not a valid .npy array ({str(exc)[:200]})") from None
