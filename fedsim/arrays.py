"""Torch state dicts <-> Flower ArrayRecords, byte-for-byte Flower's format, without its per-array overhead.

Flower's `Array` stores NumPy's .npy serialisation and parses it back with `np.load` (a header parse per
array). `NpyArray` is an `Array` holding the very same bytes, built from a cached header and read back with
`np.frombuffer`; anything in Flower that reads it (aggregation, `to_torch_state_dict`) gets identical arrays,
and over the wire it is a plain `Array`.
"""

from __future__ import annotations

import functools
import io

import numpy as np
import torch
from flwr.app import Array, ArrayRecord


@functools.lru_cache(maxsize=1024)
def npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    """The header np.save writes for a C-ordered array of this dtype and shape."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                  "fortran_order": False, "shape": shape})
    return buffer.getvalue()


class NpyArray(Array):
    """A Flower `Array` (stype numpy.ndarray) that serialises and deserialises without parsing headers."""

    @classmethod
    def from_numpy_ndarray(cls, ndarray: np.ndarray) -> NpyArray:
        ndarray = np.ascontiguousarray(ndarray)
        shape = tuple(int(s) for s in ndarray.shape)
        data = npy_header(ndarray.dtype.str, shape) + ndarray.tobytes()
        return cls(dtype=str(ndarray.dtype), shape=shape, stype="numpy.ndarray", data=data)

    def numpy(self) -> np.ndarray:
        offset = len(npy_header(np.dtype(self.dtype).str, tuple(self.shape)))
        return np.frombuffer(self.data, dtype=self.dtype, offset=offset).reshape(self.shape).copy()


def state_to_record(state: dict[str, torch.Tensor]) -> ArrayRecord:
    """A model's state dict as an ArrayRecord (same bytes as `ArrayRecord(state_dict)`)."""
    arrays = {key: NpyArray.from_numpy_ndarray(t.detach().cpu().numpy()) for key, t in state.items()}
    record = ArrayRecord()
    storage = record.__dict__.get("_data")
    if isinstance(storage, dict) and all(isinstance(k, str) for k in arrays):
        storage.update(arrays)  # keys and values are known-good: skip TypedDict's per-item checks (hot path)
    else:
        for key, array in arrays.items():
            record[key] = array
    return record
