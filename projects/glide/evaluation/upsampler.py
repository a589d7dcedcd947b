"""How well the 64->256 upsampler restores a known high-resolution image:
PSNR and SSIM against the reference, beside bicubic upsampling."""
from typing import Dict, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from mmagic.registry import METRICS
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log

from projects.glide.images import to_unit_8bit

from .samples import sample_field

MAX_PSNR = 100.0


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two images in [0, 1] (capped at 100 dB)."""
    mse = torch.mean((a.double() - b.double())**2).item()
    if mse <= 10**(-MAX_PSNR / 10):
        return MAX_PSNR
    return float(10 * np.log10(1.0 / mse))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x**2 / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11,
         sigma: float = 1.5) -> float:
    """SSIM (Wang et al. 2004: gaussian window 11, sigma 1.5, K1 0.01,
    K2 0.03, data range 1) of two (C, H, W) images in [0, 1], averaged
    over channels and the valid window positions."""
    c = a.shape[0]
    w = _gaussian_window(window, sigma).expand(c, 1, window, window)
    x, y = a.double()[None], b.double()[None]

    def blur(t):
        return F.conv2d(t, w, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return float(s.mean())


@METRICS.register_module()
class UpsamplerPSNR(BaseMetric):
    """PSNR / SSIM of the upsampler's output and of bicubic upsampling,
    both against the high-resolution reference.

    ``process`` takes per-item dicts with ``image`` (the model's output,
    uint8 (3, 256, 256)), ``img`` (the reference, float (3, 256, 256) in
    [-1, 1]) and ``low_res`` (the model's input, float (3, 64, 64) in
    [-1, 1]), e.g. a ``ShapesDataset(resolution=256, low_res=64)`` test set
    with the model upsampling the given ``low_res``. All images are compared
    as 8-bit images; bicubic is ``F.interpolate(mode='bicubic',
    antialias=False, align_corners=False)``, clamped.

    If an item also holds ``low_res_image`` (the 64x64 image the model
    actually upsampled) and it differs from ``low_res``, the model sampled its
    own base image instead of upsampling the given one and the numbers mean
    nothing: a warning says so and ``mismatched_low_res`` counts those items.

    ``compute_metrics`` returns ``model/psnr``, ``bicubic/psnr``,
    ``psnr_gain`` (model - bicubic), ``model/ssim``, ``bicubic/ssim``
    (with ``ssim=True``), ``count`` and ``mismatched_low_res`` (all averaged
    per image), under the prefix ``upsampler``.

    Args:
        ssim (bool): also report SSIM.
    """
    default_prefix = 'upsampler'

    def __init__(self, ssim: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.with_ssim = ssim
        self._warned = False

    def process(self, data_batch, data_samples: Sequence) -> None:
        for sample in data_samples:
            missing = [k for k in ('image', 'img', 'low_res')
                       if sample_field(sample, k) is None]
            if missing:
                raise KeyError(
                    f'UpsamplerPSNR needs image, img (the 256x256 reference) '
                    f'and low_res (the 64x64 input) per item; missing '
                    f'{missing}: use a test set with references, e.g. '
                    'ShapesDataset(resolution=256, low_res=64)')
            out = to_unit_8bit(sample_field(sample, 'image'), 'image')
            ref = to_unit_8bit(sample_field(sample, 'img'), 'img')
            low = to_unit_8bit(sample_field(sample, 'low_res'), 'low_res')
            if out.shape != ref.shape:
                raise ValueError(f'the model output is {tuple(out.shape)} but '
                                 f'the reference img is {tuple(ref.shape)}')
            bicubic = F.interpolate(
                low[None], size=ref.shape[-2:], mode='bicubic',
                align_corners=False)[0].clamp(0, 1)
            bicubic = (bicubic * 255).round() / 255
            mismatch = False
            used = sample_field(sample, 'low_res_image')
            if used is not None:
                used = to_unit_8bit(used, 'low_res_image')
                mismatch = used.shape != low.shape or bool(
                    (used - low).abs().max() > 1.5 / 255)
            if mismatch and not self._warned:
                self._warned = True
                print_log(
                    'UpsamplerPSNR: the model upsampled a low-res image other '
                    'than the given low_res (it sampled its own base image), '
                    'so PSNR/SSIM vs the reference are meaningless; make the '
                    'model upsample the given low_res (test_cfg switch)',
                    logger='current', level=30)
            record = dict(
                psnr_model=psnr(out, ref),
                psnr_bicubic=psnr(bicubic, ref),
                mismatch=mismatch)
            if self.with_ssim:
                record.update(
                    ssim_model=ssim(out, ref), ssim_bicubic=ssim(bicubic, ref))
            self.results.append(record)

    def compute_metrics(self, results: list) -> Dict[str, float]:
        if not results:
            return dict(count=0)

        def mean(key):
            return float(np.mean([r[key] for r in results]))

        metrics = {
            'model/psnr': mean('psnr_model'),
            'bicubic/psnr': mean('psnr_bicubic'),
        }
        metrics['psnr_gain'] = metrics['model/psnr'] - metrics['bicubic/psnr']
        if self.with_ssim:
            metrics['model/ssim'] = mean('ssim_model')
            metrics['bicubic/ssim'] = mean('ssim_bicubic')
        metrics['count'] = len(results)
        metrics['mismatched_low_res'] = sum(r['mismatch'] for r in results)
        return metrics
