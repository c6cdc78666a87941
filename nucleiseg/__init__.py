"""nucleiseg: nuclei segmentation in H&E breast-cancer histopathology."""

__version__ = "0.1.0"
