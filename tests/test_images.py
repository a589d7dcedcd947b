"""Tests of the image conversions in projects/glide/images.py."""
import numpy as np
import pytest
import torch
from PIL import Image

from projects.glide.images import hwc_to_tensor, quantize_8bit, to_hwc_uint8, to_uint8, to_unit_8bit


def test_quantize_8bit_and_to_uint8_share_the_256_levels():
    x = torch.tensor([-2., -1., -0.5, 0., 0.003, 0.5, 1., 3.])
    assert to_uint8(x).tolist() == [0, 0, 64, 128, 128, 191, 255, 255]
    q = quantize_8bit(x.clamp(-1, 1))
    assert torch.equal(to_uint8(q), to_uint8(x))
    assert torch.allclose(q, to_uint8(x).float() / 127.5 - 1)


def test_to_hwc_uint8_layouts_floats_and_errors():
    chw = torch.arange(3 * 2 * 4, dtype=torch.uint8).reshape(3, 2, 4)
    hwc = to_hwc_uint8(chw)
    assert hwc.shape == (2, 4, 3) and hwc.dtype == np.uint8 and hwc.flags['C_CONTIGUOUS']
    assert hwc[1, 2].tolist() == chw[:, 1, 2].tolist()
    assert np.array_equal(to_hwc_uint8(hwc), hwc)  # already (H, W, 3)
    floats = np.array([-2., -1., 0., 0.5, 1., 3.], np.float32).reshape(1, 1, 6).repeat(3, 0)  # (3, 1, 6)
    assert to_hwc_uint8(floats, allow_float=True)[:, :, 0].ravel().tolist() == [0, 0, 128, 191, 255, 255]
    assert np.array_equal(to_hwc_uint8(torch.from_numpy(floats), allow_float=True),
                          to_hwc_uint8(floats, allow_float=True))
    with pytest.raises(ValueError, match=r'\(3, H, W\) or \(H, W, 3\) RGB image, got shape \(2, 4\)'):
        to_hwc_uint8(np.zeros((2, 4), np.uint8))


def test_to_hwc_uint8_takes_floats_only_when_asked():
    """Metrics call it without ``allow_float``: a float image (in whatever
    range) is an error there, not a silently wrong score."""
    with pytest.raises(TypeError, match='expected a uint8 image, got float32'):
        to_hwc_uint8(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(TypeError, match='expected a uint8 image, got float32'):
        to_hwc_uint8(torch.zeros(3, 4, 4))
    with pytest.raises(TypeError, match=r'expected a uint8 image or a float one in \[-1, 1\], got int64'):
        to_hwc_uint8(np.zeros((4, 4, 3), np.int64), allow_float=True)


def test_to_unit_8bit_compares_every_image_as_its_8bit_image():
    u8 = torch.tensor([0, 1, 128, 255], dtype=torch.uint8).reshape(1, 1, 4).repeat(3, 1, 1)
    unit = to_unit_8bit(u8)
    assert unit.dtype == torch.float64 and unit[0, 0].tolist() == [0, 1 / 255, 128 / 255, 1]
    floats = torch.tensor([-2., 0., 0.001, 1.]).reshape(1, 1, 4).repeat(3, 1, 1)
    assert to_unit_8bit(floats)[0, 0].tolist() == [0, 128 / 255, 128 / 255, 1]  # clamped and on the grid
    assert torch.equal(to_unit_8bit(u8.numpy()), unit)
    with pytest.raises(ValueError, match=r'low_res must be a \(3, H, W\) RGB image, got shape \(4, 4, 3\)'):
        to_unit_8bit(torch.zeros(4, 4, 3), 'low_res')


def test_hwc_to_tensor_maps_both_input_ranges_to_the_models():
    u8 = np.array([0, 51, 255], np.uint8).reshape(1, 1, 3).repeat(2, 1)  # (1, 2, 3)
    for img in (u8, Image.fromarray(u8, 'RGB')):
        x = hwc_to_tensor(img)
        assert x.dtype == torch.float32 and x.shape == (3, 1, 2) and x.is_contiguous()
        assert x[:, 0, 0].tolist() == pytest.approx([-1, 51 / 127.5 - 1, 1])
    unit = np.array([0., 0.25, 1.], np.float32).reshape(1, 1, 3)
    assert hwc_to_tensor(unit)[:, 0, 0].tolist() == [-1, -0.5, 1]
    assert torch.equal(to_uint8(hwc_to_tensor(u8)).permute(1, 2, 0), torch.from_numpy(u8))
