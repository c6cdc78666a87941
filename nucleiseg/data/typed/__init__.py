"""Readers of the public datasets whose nuclei carry a class (PanNuke, CoNSeP, Lizard, CoNIC, MoNuSAC) and of our
own typed training folder (``typed-folder``: QuPath exports, typed synthetic tiles).

Every reader returns :class:`nucleiseg.data.source.SourceImage` records with ``classes`` and a typed loader:
``load_typed()`` gives ``(image uint8 HxWx3, instances int32 HxW, types int32 HxW)``. This module stays light
(the CLI reads the names below to build its choices); import a reader from its own module.
"""

# reader modules: pannuke, consep, lizard, conic, monusac, folder (typed-folder)
TYPED_DATASETS = ("pannuke", "consep", "lizard", "conic", "monusac", "typed-folder")
