"""The tracing window: a share of the depth by default (ROME's 10 of 48 layers), or a fixed count."""

import pytest
from omegaconf import OmegaConf

from backlens.api.tracing import window_layers


def tracing(**settings):
    return OmegaConf.create({"window": None, "window_fraction": 10 / 48, **settings})


def test_default_fraction_is_romes_share_of_the_depth():
    assert window_layers(tracing(), 48) == 10  # ROME on GPT-2 XL
    assert window_layers(tracing(), 30) == 6  # SmolLM2-135M: 6.25 layers
    assert window_layers(tracing(), 2) == 1  # never below one layer


def test_fixed_window_overrides_the_fraction():
    assert window_layers(tracing(window=1), 30) == 1
    assert window_layers(tracing(window=10), 30) == 10


@pytest.mark.parametrize("fraction", [None, 0.0, 1.5])
def test_bad_fraction_names_the_key(fraction):
    with pytest.raises(ValueError, match="tracing.window_fraction"):
        window_layers(tracing(window_fraction=fraction), 30)
