"""GLIDE's noise-aware CLIP: the model that steers samples toward their caption
in CLIP guidance (Nichol et al., 2021, section 3.2).

Architecture and guidance facts from openai/glide-text2im (MIT),
``glide_text2im/clip/model_creation.py``: embeddings are ``z / (||z|| + 1e-12)``;
the logit scale is kept as ``log(logit_scale)`` in float32 and applied as its
``exp``; the guidance gradient is ``grad_scale * d/dx [exp(logit_scale) *
sum_b z_text[b] . z_image(x, t)[b]]``, so prompt b steers row b. The CLIP
always computes in float32, whatever precision the UNets run in.
"""
import math
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmagic.registry import MODELS

from ...checkpoint import check_state_dict, load_checkpoint_file
from .encoders import NoisedCLIPImageEncoder, NoisedCLIPTextEncoder
from .tokenizer import GlideCLIPTokenizer

#: the folder holding ``projects/``: relative ``pretrained`` paths resolve here too
PROJECT_ROOT = Path(__file__).resolve().parents[4]


def normalize(z: torch.Tensor) -> torch.Tensor:
    """``z / (||z|| + 1e-12)`` along the last dimension (CLIP's embedding norm)."""
    return z / (torch.linalg.norm(z, dim=-1, keepdim=True) + 1e-12)


@MODELS.register_module()
class NoisedCLIP(nn.Module):
    """Text and noisy-image encoders with a shared embedding and a fixed logit scale.

    Args:
        text_encoder (dict | None): :class:`NoisedCLIPTextEncoder` arguments
            (``width``, ``heads``, ``layers``, ``vocab_size``, ``text_ctx``);
            None: the released model's.
        image_encoder (dict | None): :class:`NoisedCLIPImageEncoder` arguments
            (``width``, ``heads``, ``layers``, ``image_size``, ``patch_size``,
            ``num_timesteps``); None: the released model's.
        embed_dim (int): joint embedding width (512 released).
        logit_scale (float): the similarity factor (100, kept as its log).
        tokenizer (dict): the prompt tokenizer; its ``text_ctx`` defaults to
            the text encoder's.
        pretrained (str | None): a checkpoint to load at build time (strict,
            ``weights_only``): a NoisedCLIP state dict, bare or under
            ``state_dict``, its keys bare or prefixed ``clip.`` (a Glide
            checkpoint). A relative path is tried from the working directory,
            then from the project root, so a config can name a bundled file;
            a ``Glide`` whose CLIP is pretrained loads checkpoints without
            ``clip.`` keys (e.g. the bundled base model beside the bundled CLIP).
    """

    def __init__(self,
                 text_encoder: Optional[dict] = None,
                 image_encoder: Optional[dict] = None,
                 embed_dim: int = 512,
                 logit_scale: float = 100.,
                 tokenizer: dict = dict(type='GlideCLIPTokenizer'),
                 pretrained: Optional[str] = None):
        super().__init__()
        self.text_encoder = NoisedCLIPTextEncoder(**(text_encoder or {}), embed_dim=embed_dim)
        self.image_encoder = NoisedCLIPImageEncoder(**(image_encoder or {}), embed_dim=embed_dim)
        if isinstance(logit_scale, bool) or not isinstance(logit_scale, (int, float)) or logit_scale <= 0:
            raise ValueError(f'logit_scale must be a number > 0, got {logit_scale!r}')
        self.register_buffer('logit_scale', torch.tensor(math.log(logit_scale), dtype=torch.float32),
                             persistent=False)
        self.tokenizer = MODELS.build(dict(dict(text_ctx=self.text_encoder.text_ctx), **tokenizer))
        if not isinstance(self.tokenizer, GlideCLIPTokenizer):
            raise TypeError(f'tokenizer must build a GlideCLIPTokenizer, got {type(self.tokenizer).__name__}')
        if self.tokenizer.text_ctx != self.text_encoder.text_ctx:
            raise ValueError(f'tokenizer.text_ctx {self.tokenizer.text_ctx} differs from the text '
                             f'encoder\'s text_ctx {self.text_encoder.text_ctx}')
        self._register_load_state_dict_pre_hook(self._check_checkpoint, with_module=False)
        self.pretrained = pretrained
        if pretrained is not None:
            self.load_pretrained(pretrained)

    def load_pretrained(self, filename: str) -> None:
        """Load the weights of ``filename`` (see ``pretrained``), cast to float32."""
        path = Path(filename).expanduser()
        if not path.is_absolute() and not path.exists() and (PROJECT_ROOT / path).exists():
            path = PROJECT_ROOT / path
        state = load_checkpoint_file(str(path), map_location='cpu')
        state = state.get('state_dict', state)
        if any(k.startswith('clip.') for k in state):
            state = {k[len('clip.'):]: v for k, v in state.items() if k.startswith('clip.')}
        self.load_state_dict({k: v.float() for k, v in state.items()})

    def _check_checkpoint(self, state_dict, prefix, *args):
        """Refuse a checkpoint whose keys or shapes differ when loaded on its own
        (inside :class:`Glide`, Glide checks the whole model)."""
        if not prefix:
            check_state_dict({k: v.shape for k, v in self.state_dict().items()}, state_dict)

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    def tokenize(self, prompts: Union[str, Sequence[str]]) -> Tuple[torch.Tensor, torch.Tensor]:
        """``tokens`` (B, text_ctx) int64 and ``lens`` (B,) int64 on the model's device."""
        return self.tokenizer(prompts, device=self.device)

    def encode_text(self, tokens: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """(B, embed_dim) float32 unit text embeddings of (B, text_ctx) tokens and (B,) lens."""
        return normalize(self.text_encoder(tokens, lens))

    def encode_image(self, x: torch.Tensor, t: Union[int, torch.Tensor]) -> torch.Tensor:
        """(B, embed_dim) float32 unit image embeddings of x (B, 3, S, S) in [-1, 1]
        (noisy x_t as is) at ORIGINAL timesteps t (int or (B,), 0..num_timesteps-1)."""
        return normalize(self.image_encoder(x, t))

    def similarity(self, text_embeddings: torch.Tensor, image_embeddings: torch.Tensor) -> torch.Tensor:
        """(B,) row-wise logits ``exp(logit_scale) * z_text[b] . z_image[b]``."""
        return self.logit_scale.exp() * (text_embeddings * image_embeddings).sum(dim=-1)

    def guidance_grad(self, x: torch.Tensor, t: Union[int, torch.Tensor], text_embeddings: torch.Tensor,
                      grad_scale: float) -> torch.Tensor:
        """CLIP guidance's ``cond_fn``: the gradient that raises each row's similarity.

        Computed in float32 with a graph through the image encoder only, built
        and freed inside this call, so it works from a ``no_grad`` sampling loop.

        Args:
            x (Tensor): (B, 3, S, S) noisy samples x_t, [-1, 1] scale, any dtype.
            t (int | Tensor): ORIGINAL timesteps (int or (B,)), not indices
                into a respaced schedule.
            text_embeddings (Tensor): (B, embed_dim) from :meth:`encode_text`;
                row b guides sample b.
            grad_scale (float): the guidance scale.

        Returns:
            Tensor: (B, 3, S, S) float32
            ``grad_scale * d/dx sum_b similarity(text_embeddings, encode_image(x, t))[b]``.
        """
        if text_embeddings.shape != (x.shape[0], self.text_encoder.proj.out_features):
            raise ValueError(f'text_embeddings must have shape ({x.shape[0]}, '
                             f'{self.text_encoder.proj.out_features}) for x of batch {x.shape[0]}, '
                             f'got {tuple(text_embeddings.shape)}')
        if torch.is_inference_mode_enabled():
            raise RuntimeError('CLIP guidance needs gradients: call it under torch.no_grad(), '
                               'not torch.inference_mode()')
        with torch.enable_grad():
            x_var = x.detach().float().requires_grad_(True)
            loss = self.similarity(text_embeddings.detach().float(), self.encode_image(x_var, t)).sum()
            grad, = torch.autograd.grad(loss, x_var)
        return grad * grad_scale
