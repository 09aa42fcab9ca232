"""Let torchvision's pure-Python transforms import when its C++ operators cannot load.

Only for the offline image build on a machine whose wheelhouse has a CPU torch but
only PyPI's CUDA build of the matching torchvision (whose ``_C.so`` needs
``libtorch_cuda.so``): ``import torchvision`` then fails in ``_meta_registrations``
(``operator torchvision::nms does not exist``), although fedssl uses only
``torchvision.transforms.v2`` (RandAugment), which is pure Python over torch.

Installed as ``fedssl_torchvision_ops_shim.py`` plus a ``.pth`` line that imports it at
interpreter start. It costs nothing then: a meta-path finder waits for the first
``import torchvision``, tries to load torchvision's ``_C`` itself, and only when that
fails declares the schemas of the two operators that torchvision registers
unconditionally (``nms``, ``qnms``), so the import succeeds. Calling those operators
still fails (no kernel); detection models, which would need them, are not used here.
Images built with a CPU torchvision wheel (the default, online build) do not get it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from pathlib import Path

_LIBS: list = []  # keeps the schema library alive (a dropped Library unregisters)


class _TorchvisionOpsShim(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):  # noqa: ANN001, ANN201
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.origin:
            _declare_ops_if_missing(Path(spec.origin).parent)
        return spec


def _declare_ops_if_missing(pkg: Path) -> None:
    import torch

    lib_files = sorted(pkg.glob("_C*.so"))
    try:
        if lib_files:
            torch.ops.load_library(str(lib_files[0]))
            return
    except OSError:
        pass
    lib = torch.library.Library("torchvision", "DEF")  # noqa: TOR901
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBS.append(lib)


sys.meta_path.insert(0, _TorchvisionOpsShim())
