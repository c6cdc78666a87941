import numpy as np
import pandas as pd
import pytest

from nucleiseg.postprocess.features import COLUMNS, nucleus_features, write_features


def test_features_of_hand_made_nuclei(tmp_path):
    image = np.full((40, 60, 3), 230, np.uint8)
    instances = np.zeros((40, 60), np.int32)
    instances[5:15, 5:15] = 1  # 10 x 10 square
    instances[20:24, 30:50] = 2  # 4 x 20 bar
    image[instances > 0] = (90, 60, 150)  # purple: haematoxylin
    frame = nucleus_features(image, instances, "tile", microns_per_pixel=0.25)
    assert list(frame.columns[: len(COLUMNS)]) == COLUMNS and len(frame) == 2
    square, bar = frame.iloc[0], frame.iloc[1]
    assert square.area_px == 100 and bar.area_px == 80
    assert square.centroid_x == pytest.approx(9.5) and square.centroid_y == pytest.approx(9.5)
    assert square.equivalent_diameter_px == pytest.approx(np.sqrt(400 / np.pi))
    assert square.eccentricity == pytest.approx(0.0, abs=1e-6) and bar.eccentricity > 0.9
    assert abs(bar.orientation_rad) == pytest.approx(np.pi / 2, abs=1e-6)  # long axis along the columns
    assert square.solidity == pytest.approx(1.0)
    assert square.haematoxylin_mean > 0.05 and square.area_um2 == pytest.approx(100 * 0.0625)
    written = write_features(frame, tmp_path / "features.csv")
    assert pd.read_csv(written[0]).shape == (2, len(frame.columns))


def test_no_nucleus_gives_an_empty_table_with_the_columns():
    frame = nucleus_features(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.int32), "empty")
    assert len(frame) == 0 and list(frame.columns) == COLUMNS
