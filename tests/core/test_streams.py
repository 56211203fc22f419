"""Per-replica stream keys of noiseprobe.core.streams: a replica's keys do not depend on the chunk it is in."""

from __future__ import annotations

import numpy as np

from noiseprobe.core.streams import stream_keys


def test_stream_keys_are_chunk_independent_and_distinct():
    whole = stream_keys(7, 0, 100, 3)
    assert whole.shape == (100, 3) and whole.dtype == np.uint64
    assert np.array_equal(whole[37:52], stream_keys(7, 37, 15, 3))
    assert len(np.unique(whole)) == whole.size  # no two streams share a key
    assert not np.any(np.isin(stream_keys(8, 0, 100, 3), whole))  # another seed, other keys
    bits = np.unpackbits(whole.view(np.uint8))  # the keys look like random bits
    assert abs(bits.mean() - 0.5) < 4 * 0.5 / np.sqrt(bits.size)
