"""Torch state dicts <-> Flower ArrayRecords, byte-for-byte Flower's format, without its per-array overhead.

Flower's `Array` stores NumPy's .npy serialisation and parses it back with `np.load` (a header parse per
array). `NpyArray` is an `Array` holding the very same bytes, built from a cached header and read back with
`np.frombuffer`; anything in Flower that reads it (aggregation, `to_torch_state_dict`) gets identical arrays,
and over the wire it is a plain `Array`.
"""

from __future__ import annotations

import functools
import io
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import Array, ArrayRecord

from fedsim._flower import array_from_parts, fill_record, passes_as_array

if TYPE_CHECKING:  # torch loads with the first state dict (Flower imports it), not with a scenario's validation
    import torch


@functools.lru_cache(maxsize=1024)
def npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    """The header np.save writes for a C-ordered array of this dtype and shape."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                  "fortran_order": False, "shape": shape})
    return buffer.getvalue()


@functools.lru_cache(maxsize=64)
def _dtype_name(dtype: np.dtype) -> str:
    return str(dtype)  # numpy builds this string anew on every call


@passes_as_array  # in Flower's wire format an NpyArray is an Array: receivers inflate a plain Array from the same bytes
class NpyArray(Array):
    """A Flower `Array` (stype numpy.ndarray) that serialises and deserialises without parsing headers."""

    @classmethod
    def from_numpy_ndarray(cls, ndarray: np.ndarray) -> NpyArray:
        if not ndarray.flags.c_contiguous:
            ndarray = ndarray.copy(order="C")  # (np.ascontiguousarray would turn 0-d arrays into 1-d)
        shape = tuple(int(s) for s in ndarray.shape)
        # the state Array's own constructor leaves, without its argument dispatch
        return _npy_array(_dtype_name(ndarray.dtype), shape, npy_header(ndarray.dtype.str, shape) + ndarray.tobytes())

    def __reduce__(self):  # pickled (e.g. by Ray) as itself, whatever __qualname__ says
        return _npy_array, (self.dtype, tuple(self.shape), self.data)

    def numpy(self) -> np.ndarray:
        offset = len(npy_header(np.dtype(self.dtype).str, tuple(self.shape)))
        return np.frombuffer(self.data, dtype=self.dtype, offset=offset).reshape(self.shape).copy()


def _npy_array(dtype: str, shape: tuple[int, ...], data: bytes) -> NpyArray:
    return array_from_parts(NpyArray, dtype, shape, data)


def record_to_state(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """`record.to_torch_state_dict()` (through NpyArray's header-free read when the record holds them)."""
    return record.to_torch_state_dict()


class StateReader:
    """Reads ArrayRecords into state dicts, keeping the last one: the many readers of one round's global model
    (every inline client of a process, or central evaluation and the final result) share one read. The tensors
    are shared too, so callers must not modify them in place (`load_state_dict` copies)."""

    def __init__(self) -> None:
        self._record: ArrayRecord | None = None
        self._state: dict[str, torch.Tensor] = {}

    def __call__(self, record: ArrayRecord) -> dict[str, torch.Tensor]:
        if self._record is not record:
            self._record, self._state = record, record.to_torch_state_dict()
        return self._state


def state_to_record(state: dict[str, torch.Tensor]) -> ArrayRecord:
    """A model's state dict as an ArrayRecord (same bytes as `ArrayRecord(state_dict)`)."""
    arrays = {key: NpyArray.from_numpy_ndarray(t.detach().cpu().numpy()) for key, t in state.items()}
    record = ArrayRecord()
    fill_record(record, arrays)  # keys and values are known-good: skip the per-item checks (hot path)
    return record
