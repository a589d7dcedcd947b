"""GLIDE modules, registered in mmagic's registries on import."""
from .diffusion import GlideDDIMScheduler, GlideDDPMScheduler, GlideDPMSolverScheduler
from .glide import Glide
from .text_transformer import TextTransformer
from .tokenizer import GlideTokenizer
from .unet import InpaintText2ImUNet, SuperResInpaintText2ImUNet, SuperResText2ImUNet, Text2ImUNet

__all__ = [
    'Glide', 'GlideTokenizer', 'TextTransformer', 'Text2ImUNet', 'SuperResText2ImUNet',
    'InpaintText2ImUNet', 'SuperResInpaintText2ImUNet', 'GlideDDIMScheduler',
    'GlideDDPMScheduler', 'GlideDPMSolverScheduler'
]
