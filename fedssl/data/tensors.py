"""The datasets' arrays as torch tensors: a client's shard (:class:`ClientData`) and the
NHWC -> NCHW conversion every reader of the datasets needs (the sources store images
NHWC uint8, as numpy and torchvision deliver them; torch models take NCHW)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def to_nchw(x: np.ndarray) -> np.ndarray:
    """NHWC images [N, H, W, C] as a contiguous, writable NCHW array [N, C, H, W] (same
    dtype). With one channel the transpose is already contiguous and would share the
    dataset's read-only cache, which torch must not wrap: then it is copied."""
    out = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return out if out.flags.writeable else out.copy()


def nchw_tensor(x: np.ndarray) -> torch.Tensor:
    """NHWC images as a NCHW tensor of the same dtype (uint8 stays uint8)."""
    return torch.from_numpy(to_nchw(x))


@dataclass
class ClientData:
    """A client's shard as uint8 tensors [N, C, H, W] (labels int64)."""

    x_l: torch.Tensor
    y_l: torch.Tensor
    x_u: torch.Tensor
    y_u: torch.Tensor  # hidden; diagnostics only
    flip: bool = True

    @property
    def num_examples(self) -> int:
        return len(self.y_l) + len(self.y_u)


def client_data(x: np.ndarray, y: np.ndarray, labeled: np.ndarray, unlabeled: np.ndarray) -> ClientData:
    """Gather a shard (train positions ``labeled`` / ``unlabeled``) from NHWC uint8 arrays."""
    return ClientData(nchw_tensor(x[labeled]), torch.from_numpy(y[labeled].astype(np.int64)),
                      nchw_tensor(x[unlabeled]), torch.from_numpy(y[unlabeled].astype(np.int64)))
