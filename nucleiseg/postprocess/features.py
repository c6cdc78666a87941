"""Per-nucleus measurements for counting and morphometry: one row per instance.

One schema for images and slides (a script reads either): ``image`` (the input's name), ``nucleus_id`` (its
label in ``instances.tif`` / ``labels.tif`` and in the GeoJSON's measurements), centroid, shape and stain
columns, ``*_um*`` columns when the pixel size is known; slide tables add ``window`` and give coordinates in
level-0 slide pixels.

Shape descriptors come from scikit-image ``regionprops``; stain intensities from colour deconvolution
(``skimage.color.rgb2hed``, Ruifrok & Johnston): mean haematoxylin (nuclear chromatin) and eosin optical
density inside each nucleus. Lengths are in pixels, and also in micrometres when the pixel size is known.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
from skimage.color import rgb2hed
from skimage.measure import regionprops_table

from nucleiseg.util.writing import write_bytes_atomic

COLUMNS = [
    "image",
    "nucleus_id",
    "centroid_x",
    "centroid_y",
    "area_px",
    "perimeter_px",
    "equivalent_diameter_px",
    "eccentricity",
    "solidity",
    "orientation_rad",
    "haematoxylin_mean",
    "eosin_mean",
]


def nucleus_features(
    image: np.ndarray, instances: np.ndarray, image_name: str, microns_per_pixel: float | None = None
) -> pd.DataFrame:
    """``image uint8 HxWx3`` and its ``instances int32 HxW`` -> a DataFrame with :data:`COLUMNS`.

    ``centroid_x``/``centroid_y`` are pixel coordinates (column, row) in the full image; ``orientation_rad`` is the
    angle between the row axis and the major axis (scikit-image's convention), in (-pi/2, pi/2].
    """
    if instances.max() == 0:
        return pd.DataFrame(
            columns=COLUMNS + (["area_um2", "perimeter_um", "equivalent_diameter_um"] if microns_per_pixel else [])
        )
    # colour deconvolution of the nucleus pixels only (it is per pixel): a window's background is most of it
    inside = instances > 0
    stains = np.zeros((*instances.shape, 2), np.float32)
    stains[inside] = rgb2hed(image[inside][None])[0, :, :2]
    table = regionprops_table(
        instances,
        intensity_image=stains,
        properties=(
            "label",
            "centroid",
            "area",
            "perimeter",
            "equivalent_diameter_area",
            "eccentricity",
            "solidity",
            "orientation",
            "intensity_mean",
        ),
    )
    frame = pd.DataFrame(
        {
            "image": image_name,
            "nucleus_id": table["label"],
            "centroid_x": table["centroid-1"],
            "centroid_y": table["centroid-0"],
            "area_px": table["area"],
            "perimeter_px": table["perimeter"],
            "equivalent_diameter_px": table["equivalent_diameter_area"],
            "eccentricity": table["eccentricity"],
            "solidity": table["solidity"],
            "orientation_rad": table["orientation"],
            "haematoxylin_mean": table["intensity_mean-0"],
            "eosin_mean": table["intensity_mean-1"],
        }
    )
    if microns_per_pixel:
        frame["area_um2"] = frame.area_px * microns_per_pixel**2
        frame["perimeter_um"] = frame.perimeter_px * microns_per_pixel
        frame["equivalent_diameter_um"] = frame.equivalent_diameter_px * microns_per_pixel
    return frame


def write_features(frame: pd.DataFrame, csv_path: Path, parquet: bool = True) -> list[Path]:
    """Write the CSV (and a Parquet copy when pyarrow is installed), atomically; return the paths written."""
    write_bytes_atomic(csv_path, frame.to_csv(index=False).encode())
    written = [csv_path]
    if parquet and importlib.util.find_spec("pyarrow") is not None:
        import io

        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        write_bytes_atomic(csv_path.with_suffix(".parquet"), buffer.getvalue())
        written.append(csv_path.with_suffix(".parquet"))
    return written
