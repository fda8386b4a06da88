"""The loss curve's smoothing follows the loss instead of lagging it."""

import numpy as np

from diffinv.plots import centred_smooth


def test_centred_smoothing_reproduces_an_exponential_decay_and_averages_noise():
    steps = np.arange(0, 800, 10)
    decay = 1.2 * np.exp(-steps / 150)
    np.testing.assert_allclose(centred_smooth(decay), decay, rtol=1e-12)  # a trailing EMA sits above it
    noisy = decay * np.exp(np.random.default_rng(0).normal(0, 0.3, len(steps)))
    interior = slice(5, -5)
    residual_raw = np.log(noisy / decay)[interior].std()
    residual_smooth = np.log(centred_smooth(noisy) / decay)[interior].std()
    assert residual_smooth < 0.45 * residual_raw  # an 11-point mean divides the noise std by ~3.3
