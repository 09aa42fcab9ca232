"""The one NHWC -> NCHW conversion (fedssl.data.tensors): pixel (n, h, w, c) lands at
(n, c, h, w), and the result is torch-safe even from the read-only dataset cache."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from fedssl.data.tensors import client_data, nchw_tensor, to_nchw


@pytest.mark.parametrize("channels", [1, 3])
def test_nchw_moves_channels_and_never_wraps_a_read_only_cache(channels):
    x = np.arange(2 * 4 * 5 * channels, dtype=np.uint8).reshape(2, 4, 5, channels)
    x.setflags(write=False)  # as the datasets' per-process cache holds them
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when it wraps a non-writable array
        t = nchw_tensor(x)
    assert t.shape == (2, channels, 4, 5) and t.dtype.is_floating_point is False
    assert int(t[1, channels - 1, 3, 2]) == int(x[1, 3, 2, channels - 1])
    assert to_nchw(x).flags.writeable and to_nchw(x).flags.c_contiguous


def test_client_data_gathers_the_shards_positions():
    x = np.arange(6 * 2 * 2 * 1, dtype=np.uint8).reshape(6, 2, 2, 1)
    y = np.array([0, 1, 2, 0, 1, 2])
    d = client_data(x, y, labeled=np.array([4]), unlabeled=np.array([0, 5]))
    assert d.y_l.tolist() == [1] and d.y_u.tolist() == [0, 2] and d.num_examples == 3
    assert d.x_u[1, 0].tolist() == x[5, :, :, 0].tolist()
