import numpy as np
import pytest

from fedsim.seeding import derive_seed, derive_seeds


@pytest.mark.parametrize("length", [1, 2, 3, 4, 5, 8])
def test_seeds_derived_together_are_numpys_seed_sequence_one_by_one(length):
    rng = np.random.default_rng(length)
    rows = rng.integers(-(2**40), 2**40, size=(500, length)).tolist()
    rows += [[0] * length, [2**32 - 1] * length, [2**32] * length, [-1] * length]  # masked to 32 bits as parts are
    assert derive_seeds(rows) == [derive_seed(*row) for row in rows]
    assert derive_seeds([]) == []
