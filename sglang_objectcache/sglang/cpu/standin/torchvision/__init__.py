"""Import-only stand-in for torchvision on the CPU-only install.

SGLang imports `torchvision.transforms` at module level for multimodal models,
even when serving a text-only model. PyPI's torchvision wheels link libtorch_cuda and fail
to import beside the CPU build of torch ("operator torchvision::nms does not exist"), so
`scripts/install.sh` puts this package on sys.path instead, only on machines without CUDA.
Any attribute is a placeholder that raises a clear error when used: text models never
use it; image models are out of scope for this install.
"""

import sys
import types

__version__ = "0.0.0+objectcache-cpu-standin"


class _Missing:
    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str) -> "_Missing":
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Missing(f"{self._name}.{attr}")

    def __call__(self, *args, **kwargs):
        raise RuntimeError(
            f"{self._name} needs the real torchvision, which the objectcache CPU-only install "
            "replaces with a stand-in; image models are not supported on it"
        )

    def __repr__(self) -> str:
        return f"<torchvision stand-in {self._name}>"


class _Module(types.ModuleType):
    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Missing(f"{self.__name__}.{attr}")


def _install(name: str) -> _Module:
    mod = _Module(name)
    mod.__path__ = []  # a package, so "import a.b.c" resolves through sys.modules
    sys.modules[name] = mod
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, mod)
    return mod


sys.modules[__name__].__class__ = _Module
for _sub in ("transforms", "transforms.functional", "transforms.v2", "transforms.v2.functional",
             "io", "ops", "models", "datasets", "utils"):
    _install(f"{__name__}.{_sub}")
