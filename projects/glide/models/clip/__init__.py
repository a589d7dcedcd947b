"""GLIDE's noise-aware CLIP (CLIP guidance): tokenizer, encoders, model, guidance rules.

Importing this package registers :class:`NoisedCLIP` and
:class:`GlideCLIPTokenizer` in mmagic's ``MODELS`` registry.
"""
from .encoders import NoisedCLIPImageEncoder, NoisedCLIPTextEncoder
from .guidance import condition_mean, condition_score
from .model import NoisedCLIP
from .tokenizer import GlideCLIPTokenizer
from .training import NoisedCLIPModel

__all__ = [
    'NoisedCLIP', 'NoisedCLIPTextEncoder', 'NoisedCLIPImageEncoder', 'GlideCLIPTokenizer',
    'condition_mean', 'condition_score', 'NoisedCLIPModel'
]
