"""nucleiseg: nuclei segmentation in H&E breast-cancer histopathology.

``nucleiseg.segment(image)`` and ``nucleiseg.segment_slide(path, out)`` give nuclei from Python with the default
model (see :mod:`nucleiseg.predict.api`); they are imported on first use, so ``import nucleiseg`` stays light.
"""

from typing import Any

from nucleiseg.util.moved_modules import install as _install_moved_modules

__version__ = "0.1.0"
__all__ = ["segment", "segment_slide"]

_install_moved_modules()  # old module names (before the folders) import, with a warning, for one release


def __getattr__(name: str) -> Any:
    if name in __all__:
        from nucleiseg.predict import api as module

        return getattr(module, name)
    raise AttributeError(f"module 'nucleiseg' has no attribute {name!r}")
