"""NpyArray / state_to_record: byte-identical to Flower's ArrayRecord, and read back identically."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from fedsim.arrays import NpyArray, state_to_record

ARRAYS = [
    np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32),
    np.arange(5),
    np.array(3.0, dtype=np.float32),
    np.zeros((0, 3)),
    np.random.default_rng(1).normal(size=100_000),
    np.array([True, False]),
    np.ones((2, 3), dtype=np.int64)[:, :2],  # not contiguous
]


@pytest.mark.parametrize("index", range(len(ARRAYS)))
def test_same_bytes_and_values_as_flower(index):
    a = ARRAYS[index]
    ours, theirs = NpyArray.from_numpy_ndarray(a), Array.from_numpy_ndarray(a.copy(order="C"))
    assert (ours.dtype, tuple(ours.shape), ours.stype, ours.data) == (theirs.dtype, tuple(theirs.shape), theirs.stype,
                                                                      theirs.data)
    back = ours.numpy()
    assert np.array_equal(back, a) and back.dtype == a.dtype and back.flags.writeable
    assert ours.object_id == theirs.object_id  # Flower's content addressing sees the same object


def test_state_to_record_matches_arrayrecord():
    state = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2)).state_dict()
    ours, theirs = state_to_record(state), ArrayRecord(state)
    assert list(ours) == list(theirs) and ours.object_id == theirs.object_id
    restored = ours.to_torch_state_dict()
    assert all(torch.equal(restored[k], state[k]) for k in state)


def test_wire_format_and_pickling():
    import pickle

    from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

    record = state_to_record(torch.nn.Linear(3, 2).state_dict())
    contents = {record.object_id: record.deflate()}
    for array in record.values():
        contents[array.object_id] = array.deflate()
        contents.update({cid: child.deflate() for cid, child in array.children.items()})
    inflated = inflate_object_from_contents(record.object_id, contents)
    assert type(next(iter(inflated.values()))) is Array  # a receiver sees plain Flower Arrays
    assert all(inflated[k].data == record[k].data for k in record)
    copy = pickle.loads(pickle.dumps(record))
    assert all(type(v) is NpyArray and v.data == record[k].data for k, v in copy.items())


def test_an_inline_run_reads_each_global_model_once(tmp_path, monkeypatch, small_scenario):
    """Central evaluation, every in-process client and the final result share one read of each round's model
    (a ResNet-50's state is ~100 MB: one read costs ~0.17 s here)."""
    from collections import Counter

    from flwr.app import ArrayRecord

    import fedsim

    reads, alive, original = Counter(), [], ArrayRecord.to_torch_state_dict

    def counted(self, *args, **kwargs):
        reads[id(self)] += 1
        alive.append(self)  # kept, so no two records share an id
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ArrayRecord, "to_torch_state_dict", counted)
    fedsim.run(small_scenario(run__rounds=3, run__vectorize=False), out=tmp_path / "run")
    assert reads and max(reads.values()) == 1
