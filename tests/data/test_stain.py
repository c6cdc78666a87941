import numpy as np
import pytest

from nucleiseg.data.stain import StainNormaliser, fit_from_config, from_state
from nucleiseg.data.synthetic import SyntheticSpec, synthetic_tile
from nucleiseg.util.errors import ConfigError


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_normalising_removes_a_stain_difference(method):
    reference, _ = synthetic_tile(SyntheticSpec(128, 128, n_nuclei=30), 1)
    source, _ = synthetic_tile(SyntheticSpec(128, 128, n_nuclei=30), 2)
    # the same tissue stained more lightly: optical density scaled by 0.6 (Beer-Lambert)
    faded = np.clip(255 * (np.maximum(source, 1) / 255.0) ** 0.6, 0, 255).astype(np.uint8)
    normaliser = StainNormaliser.fit(method, reference)
    out = normaliser(faded)
    assert out.shape == faded.shape and out.dtype == np.uint8
    # the same tissue in two stainings: normalisation brings them together
    gap = lambda a, b: np.abs(a.astype(float) - b.astype(float)).mean()  # noqa: E731
    assert gap(out, normaliser(source)) < 0.6 * gap(faded, source)
    rebuilt = from_state(normaliser.state())
    assert np.array_equal(rebuilt(faded), out)  # the state alone reproduces the normalisation


def test_config_errors_are_named(tmp_path):
    assert fit_from_config({"method": "none"}) is None and from_state(None) is None
    with pytest.raises(ConfigError, match="data.stain.reference"):
        fit_from_config({"method": "macenko", "reference": None})
    with pytest.raises(ConfigError, match="data.stain.method='vahadane'"):
        fit_from_config({"method": "vahadane", "reference": "x.png"})
