"""Metrics of the GLIDE project: the shapes judge, CLIP score, FID and the
upsampler's PSNR / SSIM (all registered in mmagic's ``METRICS``)."""
from .clip_retrieval import CLIPRetrievalAccuracy
from .clip_score import GlideCLIPScore
from .fid import GlideFID, frechet_distance
from .shapes_accuracy import ATTRIBUTES, ShapesAccuracy, detect_shapes, judge_image
from .upsampler import UpsamplerPSNR, psnr, ssim

__all__ = ['ATTRIBUTES', 'ShapesAccuracy', 'detect_shapes', 'judge_image',
           'GlideCLIPScore', 'GlideFID', 'frechet_distance', 'UpsamplerPSNR',
           'psnr', 'ssim', 'CLIPRetrievalAccuracy']
