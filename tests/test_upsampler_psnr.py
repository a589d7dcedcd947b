"""Tests of the upsampler metric: PSNR / SSIM of the model and of bicubic."""
import pytest
import torch
import torch.nn.functional as F
from mmagic.registry import METRICS

from projects.glide.datasets import ShapesDataset
from projects.glide.evaluation import psnr, ssim


def test_upsampler_psnr_model_vs_bicubic():
    ds = ShapesDataset('seen', size=2, seed=0, resolution=256, low_res=64)
    metric = METRICS.build(dict(type='UpsamplerPSNR'))
    items = []
    for i in range(2):
        item = ds[i]
        item['image'] = ((item['img'] + 1) * 127.5).round().to(torch.uint8)  # perfect model
        items.append(item)
    metric.process(None, items)
    res = metric.compute_metrics(metric.results)
    assert res['model/psnr'] == 100.0 and res['model/ssim'] == pytest.approx(1.0)
    assert 15 < res['bicubic/psnr'] < 60 and 0 < res['bicubic/ssim'] < 1
    assert res['psnr_gain'] == pytest.approx(100.0 - res['bicubic/psnr'])
    assert res['count'] == 2 and res['mismatched_low_res'] == 0
    # a model that outputs bicubic scores exactly like bicubic
    metric2 = METRICS.build(dict(type='UpsamplerPSNR'))
    item = ds[0]
    low = ((item['low_res'] + 1) * 127.5).round() / 255
    bic = F.interpolate(low[None].double(), size=(256, 256), mode='bicubic',
                        align_corners=False)[0].clamp(0, 1)
    item['image'] = (bic * 255).round().to(torch.uint8)
    item['low_res_image'] = torch.zeros(3, 64, 64, dtype=torch.uint8)  # a different input
    metric2.process(None, [item])
    res2 = metric2.compute_metrics(metric2.results)
    assert res2['model/psnr'] == pytest.approx(res2['bicubic/psnr'])
    assert res2['mismatched_low_res'] == 1
    a = torch.rand(3, 32, 32, dtype=torch.float64)
    assert ssim(a, a) == pytest.approx(1.0) and psnr(a, a) == 100.0
    assert psnr(torch.zeros(3, 4, 4), torch.ones(3, 4, 4)) == pytest.approx(0.0)
    with pytest.raises(KeyError, match='img'):
        metric2.process(None, [dict(image=item['image'], low_res=item['low_res'])])
