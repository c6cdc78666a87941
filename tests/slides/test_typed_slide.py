"""A typed model on a whole slide: each nucleus's class in the GeoJSON (QuPath's classification, in its colour),
the table and the counts, per class for the slide and for each annotated region (nuclei per mm² by class: the
number a pathologist asks of a tumour annotation), and the cohort table's class columns."""

import json

import numpy as np
import pandas as pd
import torch

from nucleiseg.config.settings import defaults
from nucleiseg.data.synthetic_slide import discs_content, write_slide
from nucleiseg.inference.session import InferenceSession
from nucleiseg.predict.cohort_table import slide_row
from nucleiseg.predict.run import predict

CLASSES = ["tumour", "lymphocyte"]
MPP, RADIUS = 0.25, 10
BLACK = [(float(x), 150.0) for x in range(100, 1500, 200)]  # tumour: black discs, one row
BLUE = [(float(x), 600.0) for x in range(100, 1500, 140)]  # lymphocytes: blue discs, another row


class TypedOracle(torch.nn.Module):
    """A nucleus is dark; its class is its colour: blue is a lymphocyte, black a tumour cell."""

    def forward(self, x):
        dark = 0.5 - x.mean(dim=1, keepdim=True)
        blue = x[:, 2:3] - x[:, 0:1]
        return torch.cat([40 * dark, -40 * dark, 20 * (0.4 - blue), 20 * (blue - 0.4)], dim=1)


def _session():
    hparams = {
        "encoder": "oracle",
        "head": "binary",
        "threshold": 0.5,
        "postprocess": {"method": "components", "min_area": 3, "fill_holes": 0},
        "data": {"model_mpp": 0.5},
        "types": CLASSES,
    }
    settings = defaults("predict", device="cpu", precision="32-true", tile_size=128)
    return InferenceSession(TypedOracle(), hparams, settings)


def _content():
    black, blue = discs_content(BLACK, RADIUS), discs_content(BLUE, RADIUS)

    def content(x, y, w, h):
        out = black(x, y, w, h)
        out[blue(x, y, w, h)[..., 0] == 0] = (0, 0, 230)
        return out

    return content


def test_a_typed_slide_counts_and_measures_each_class_in_each_region(tmp_path):
    slide = write_slide(tmp_path / "typed.tif", 1600, 800, _content(), mpp=MPP, tile=128, min_side=256)
    region = [[0, 0], [768, 0], [768, 800], [0, 800], [0, 0]]  # the left three window columns
    roi = tmp_path / "tumour.geojson"
    geometry = {"type": "Polygon", "coordinates": [region]}
    properties = {"objectType": "annotation", "name": "left"}
    roi.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [{"type": "Feature", "geometry": geometry, "properties": properties}],
            }
        )
    )
    settings = defaults("slide", window=128, margin=16, thumbnail=512)
    summary = predict([slide], tmp_path / "out", _session(), progress="none", slide_settings=settings, roi=roi)
    assert summary.ok, summary.failed
    folder = tmp_path / "out" / "typed"
    info = json.loads((folder / "slide.json").read_text())
    # with regions, only the windows over them are predicted: the slide's nuclei are the region's
    in_left = {"tumour": sum(x < 768 for x, _ in BLACK), "lymphocyte": sum(x < 768 for x, _ in BLUE)}
    assert info["nuclei_by_class"] == in_left

    table = pd.read_csv(folder / "features.csv")
    assert (table.loc[table["centroid_y"] < 400, "type"] == "tumour").all()
    assert (table.loc[table["centroid_y"] > 400, "type"] == "lymphocyte").all()
    assert table["type_probability"].between(0.9, 1).all()

    features = json.loads((folder / "nuclei.geojson").read_text())["features"]
    names = [f["properties"]["classification"]["name"] for f in features]
    assert sorted(names) == sorted(table["type"])
    colours = {
        f["properties"]["classification"]["name"]: tuple(f["properties"]["classification"]["color"]) for f in features
    }
    assert len(set(colours.values())) == 2  # one colour per class, as QuPath shows them

    left = info["regions"]["left"]
    area_mm2 = 768 * 800 * MPP**2 / 1e6
    assert left["by_class"]["tumour"]["nuclei"] == in_left["tumour"]
    assert left["by_class"]["lymphocyte"]["nuclei"] == in_left["lymphocyte"]
    assert np.isclose(left["by_class"]["lymphocyte"]["nuclei_per_mm2"], in_left["lymphocyte"] / area_mm2, rtol=1e-3)

    row = slide_row(folder, "typed", str(slide), roi, "finished", "", "oracle", "0" * 64)
    assert row["nuclei_tumour"] == in_left["tumour"] and row["nuclei_lymphocyte"] == in_left["lymphocyte"]
    assert np.isclose(row["lymphocyte_per_mm2"], in_left["lymphocyte"] / row["tissue_mm2"])
