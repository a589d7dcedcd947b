"""What the metrics share: reading the per-item results that metrics and hooks
receive from ``Glide.test_step`` (dicts, or mmengine data elements with the
same fields), and the base of the metrics that run a reference network."""
from typing import Any, List, Optional, Sequence

import numpy as np
import torch
from mmengine.evaluator import BaseMetric

from projects.glide.images import to_hwc_uint8


def sample_field(sample, key: str, default: Any = None) -> Any:
    """``sample[key]`` for dict-like samples, else ``sample.key``; ``default``
    if absent."""
    if hasattr(sample, 'get'):
        return sample.get(key, default)
    return getattr(sample, key, default)


def sample_images(data_samples: Sequence, metric: str) -> List[np.ndarray]:
    """The ``image`` of every sample as uint8 (H, W, 3); KeyError naming
    ``metric`` when a sample has none."""
    images = []
    for sample in data_samples:
        img = sample_field(sample, 'image')
        if img is None:
            raise KeyError(f'{metric}: data sample without an "image" field')
        images.append(to_hwc_uint8(img))
    return images


class NetworkMetric(BaseMetric):
    """A metric that runs a local reference network (CLIP, Inception) on
    ``device``, ``batch_size`` images at a time (``batch_size`` >= 1)."""

    def __init__(self, batch_size: int, device='cpu', collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        if batch_size < 1:
            raise ValueError(f'batch_size must be >= 1, got {batch_size}')
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
