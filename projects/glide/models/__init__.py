"""GLIDE modules, registered in mmagic's registries on import."""
from .attention import SDPAAttnProcessor, TextAttentionBlock
from .clip import GlideCLIPTokenizer, NoisedCLIP, NoisedCLIPModel
from .diffusion import GlideDDIMScheduler, GlideDDPMScheduler, GlideDPMSolverScheduler
from .glide import Glide
from .sampling import SAMPLING_DEFAULTS
from .text_transformer import TextTransformer
from .tokenizer import GlideTokenizer
from .training import (
                       AuxiliaryLoss,
                       AuxLossInputs,
                       ForegroundPixelWeight,
                       HighNoiseTimestepSampler,
                       PixelWeight,
                       TimestepSampler,
                       TrainingNoise,
                       TruncatedSNRWeight,
                       UniformTimestepSampler,
)
from .unet import InpaintText2ImUNet, SuperResInpaintText2ImUNet, SuperResText2ImUNet, Text2ImUNet

__all__ = [
    'Glide', 'GlideTokenizer', 'TextTransformer', 'Text2ImUNet', 'SuperResText2ImUNet',
    'InpaintText2ImUNet', 'SuperResInpaintText2ImUNet', 'GlideDDIMScheduler',
    'GlideDDPMScheduler', 'GlideDPMSolverScheduler', 'TextAttentionBlock', 'SDPAAttnProcessor',
    'SAMPLING_DEFAULTS', 'TimestepSampler', 'UniformTimestepSampler', 'HighNoiseTimestepSampler',
    'TrainingNoise', 'TruncatedSNRWeight', 'PixelWeight', 'ForegroundPixelWeight', 'AuxiliaryLoss',
    'AuxLossInputs', 'NoisedCLIP', 'NoisedCLIPModel', 'GlideCLIPTokenizer'
]
