"""Image conversions shared by the model, the datasets, the metrics and the tools.

The model works on float images in [-1, 1] (B, 3, H, W); files and metrics
on uint8 RGB; the shapes renderer on float (H, W, 3) in [0, 1]. Every
conversion between them lives here.
"""
from typing import Union

import numpy as np
import torch


def quantize_8bit(img: torch.Tensor) -> torch.Tensor:
    """Round an image in [-1, 1] to the 256 levels of an 8-bit image, staying
    in [-1, 1] (GLIDE feeds the upsampler its low-resolution input this way)."""
    return ((img + 1) * 127.5).round() / 127.5 - 1


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1], any shape (e.g. (B, 3, H, W)) -> uint8 in [0, 255]
    on the CPU; values outside [-1, 1] are clamped."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def to_hwc_uint8(img: Union[np.ndarray, torch.Tensor], allow_float: bool = False) -> np.ndarray:
    """One uint8 RGB image, (3, H, W) or (H, W, 3), tensor or array ->
    C-contiguous uint8 (H, W, 3) array, the layout of PIL, PNG files and the
    metrics' networks.

    ``allow_float`` also takes a float image in [-1, 1] (through
    :func:`to_uint8`), as the image writers do; metrics leave it off, so that
    a float image in another range is an error instead of a wrong score.
    """
    if isinstance(img, torch.Tensor):
        img = img.detach().cpu()
        if allow_float and img.is_floating_point():
            img = to_uint8(img)
        img = img.numpy()
    img = np.asarray(img)
    if allow_float and np.issubdtype(img.dtype, np.floating):
        img = to_uint8(torch.from_numpy(img.astype(np.float32))).numpy()
    if img.dtype != np.uint8:
        wanted = 'a uint8 image or a float one in [-1, 1]' if allow_float else 'a uint8 image'
        raise TypeError(f'expected {wanted}, got {img.dtype}')
    if img.ndim != 3 or 3 not in (img.shape[0], img.shape[-1]):
        raise ValueError(f'expected a (3, H, W) or (H, W, 3) RGB image, got shape {img.shape}')
    return np.ascontiguousarray(img if img.shape[-1] == 3 else img.transpose(1, 2, 0))


def to_unit_8bit(img: Union[np.ndarray, torch.Tensor], name: str = 'image') -> torch.Tensor:
    """One RGB image (3, H, W), uint8 in [0, 255] or float in [-1, 1] ->
    float64 (3, H, W) in [0, 1] on the 8-bit grid, so that metrics compare
    every image as the 8-bit image it is; ``name`` is used in the error."""
    if not isinstance(img, torch.Tensor):
        img = torch.as_tensor(np.asarray(img))
    img = img.detach().cpu()
    if img.dim() != 3 or img.shape[0] != 3:
        raise ValueError(f'{name} must be a (3, H, W) RGB image, got shape '
                         f'{tuple(img.shape)}')
    if img.dtype == torch.uint8:
        return img.double() / 255
    return ((img.double().clamp(-1, 1) + 1) * 127.5).round() / 255


def hwc_to_tensor(img) -> torch.Tensor:
    """One RGB image (H, W, 3): uint8 in [0, 255] (an array or a PIL image)
    or float in [0, 1] (a shapes render) -> float32 (3, H, W) in [-1, 1],
    the model's input."""
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        chw = arr.astype(np.float32).transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(chw) / 127.5 - 1)
    chw = np.ascontiguousarray(arr.transpose(2, 0, 1))
    return torch.from_numpy(chw * 2 - 1)
