"""Reading the per-item results that metrics receive from ``Glide.test_step``
(dicts, or mmengine data elements with the same fields)."""
from typing import Any, Union

import numpy as np
import torch


def sample_field(sample, key: str) -> Any:
    """``sample[key]`` for dict-like samples, else ``sample.key``; None if absent."""
    if hasattr(sample, 'get'):
        return sample.get(key, None)
    return getattr(sample, key, None)


def to_hwc_uint8(img: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
    """uint8 RGB (3, H, W) or (H, W, 3), tensor or array -> (H, W, 3) uint8 array."""
    if isinstance(img, torch.Tensor):
        img = img.detach().cpu().numpy()
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise TypeError(f'expected a uint8 image, got {img.dtype}')
    if img.ndim != 3 or 3 not in (img.shape[0], img.shape[-1]):
        raise ValueError(f'expected a (3, H, W) or (H, W, 3) RGB image, got shape {img.shape}')
    return img if img.shape[-1] == 3 else img.transpose(1, 2, 0)
