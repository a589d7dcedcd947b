"""Image conversions shared by the model, the datasets, the metrics and the tools.

The model works on float images in [-1, 1] (B, 3, H, W); files and metrics
on uint8 RGB. Every conversion between the two lives here.
"""
import torch


def quantize_8bit(img: torch.Tensor) -> torch.Tensor:
    """Round an image in [-1, 1] to the 256 levels of an 8-bit image, staying
    in [-1, 1] (GLIDE feeds the upsampler its low-resolution input this way)."""
    return ((img + 1) * 127.5).round() / 127.5 - 1


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1], any shape (e.g. (B, 3, H, W)) -> uint8 in [0, 255]
    on the CPU; values outside [-1, 1] are clamped."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
