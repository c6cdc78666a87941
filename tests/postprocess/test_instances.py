import numpy as np
import pytest

from nucleiseg.data.synthetic import SyntheticSpec, synthetic_tile
from nucleiseg.errors import ConfigError
from nucleiseg.metrics.instance import InstanceMetrics
from nucleiseg.postprocess.instances import separate_instances


def test_two_touching_discs_are_cut_apart():
    rows, cols = np.ogrid[:40, :60]
    mask = ((rows - 20) ** 2 + (cols - 20) ** 2 <= 100) | ((rows - 20) ** 2 + (cols - 37) ** 2 <= 100)
    assert separate_instances(mask, method="components").max() == 1
    labels = separate_instances(mask, method="watershed")
    assert labels.max() == 2
    assert labels[20, 15] != labels[20, 42] and labels[20, 15] > 0 and labels[20, 42] > 0
    assert np.array_equal(labels > 0, mask)  # no pixel lost or added


def test_watershed_recovers_more_touching_nuclei_than_components():
    truth_total, components_total, watershed_total = 0, 0, 0
    split = {"components": InstanceMetrics(), "watershed": InstanceMetrics()}
    for seed in range(4):
        _, truth = synthetic_tile(SyntheticSpec(192, 192, n_nuclei=30, touching_fraction=0.6), seed)
        components = separate_instances(truth > 0, method="components")
        watershed = separate_instances(truth > 0, method="watershed")
        truth_total += truth.max()
        components_total += components.max()
        watershed_total += watershed.max()
        split["components"].update(truth, components)
        split["watershed"].update(truth, watershed)
    assert components_total < watershed_total <= truth_total * 1.1
    assert split["watershed"].compute()["aji"] > split["components"].compute()["aji"]
    assert split["watershed"].compute()["object_f1"] > split["components"].compute()["object_f1"]


def test_small_objects_are_dropped_and_unknown_methods_named():
    mask = np.zeros((20, 20), bool)
    mask[2:4, 2:4] = True  # 4 px
    mask[10:16, 10:16] = True
    assert separate_instances(mask, min_area=10).max() == 1
    with pytest.raises(ConfigError, match="postprocess.method='stardist'"):
        separate_instances(mask, method="stardist")
