"""Sampling for ``Glide``: the default options, one stage's loop and the
checks of the inputs ``infer`` takes.

A stage (base or upsampler) is a :class:`StageRequest` run by
:func:`sample_stage`: classifier-free guidance on the 3 eps channels (each
half keeps its own variance channels) as in openai/glide-text2im, CLIP
guidance through the scheduler's ``cond_fn``, the inpainting ``denoised_fn``, and the img2img start (SDEdit, Meng et al.
2022: the source image noised to a kept timestep, then the remaining steps).
"""
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmagic.registry import DIFFUSION_SCHEDULERS
from torch import nn
from tqdm import tqdm

from .diffusion import GlideDDIMScheduler, GlideDDPMScheduler, GlideDPMSolverScheduler, GlideSchedulerBase
from .unet import InpaintText2ImUNet, SuperResInpaintText2ImUNet

Prompt = Union[str, Sequence[str]]

#: the defaults of ``Glide.infer``/``predict`` and ``tools/glide_demo.py``
#: (a config's ``test_cfg`` overrides them): GLIDE's notebook settings
SAMPLING_DEFAULTS = dict(guidance_scale=3., num_inference_steps=50, num_inference_steps_up='fast27',
                         upsample_temp=0.997)

#: names accepted by ``infer(sampler=...)``
SAMPLERS = {
    'ddim': GlideDDIMScheduler,
    'ddpm': GlideDDPMScheduler,
    'dpmsolver++': GlideDPMSolverScheduler,
}


@dataclass
class StageRequest:
    """One stage's sampling job.

    Attributes:
        unet: the stage's UNet.
        scheduler: its sampler (respaced by :func:`sample_stage`).
        noise: (B, 3, H, W) the start noise x_T (with ``image``: the noise
            that partly covers it).
        text_emb: the UNet's ``encode_text`` output, 2B rows (prompts, then
            unconditional prompts) when ``guidance_scale`` is set, else B.
        steps: respacing of the scheduler (int or spec such as ``'fast27'``).
        guidance_scale: classifier-free guidance scale; None: no guidance.
        generator: noise source of stochastic samplers.
        cond: conditioning images of the UNet (B rows each).
        denoised_fn: applied to every x0 prediction (inpainting), or None.
        cond_fn: guidance gradient ``cond_fn(x_t, t)`` (B rows, ``t`` the
            ORIGINAL timesteps) handed to the scheduler's ``step`` (CLIP
            guidance), or None.
        image: (B, 3, H, W) in [-1, 1] to start from (img2img), or None.
        strength: with ``image``, in (0, 1]: start at the largest kept
            timestep <= strength * T.
        show_progress, desc: a progress bar and its label.
    """
    unet: nn.Module
    scheduler: GlideSchedulerBase
    noise: torch.Tensor
    text_emb: Dict[str, torch.Tensor]
    steps: Union[int, str]
    guidance_scale: Optional[float] = None
    generator: Optional[torch.Generator] = None
    cond: Dict[str, torch.Tensor] = field(default_factory=dict)
    denoised_fn: Optional[Callable] = None
    cond_fn: Optional[Callable] = None
    image: Optional[torch.Tensor] = None
    strength: Optional[float] = None
    show_progress: bool = False
    desc: str = ''


def strength_timestep(strength: float, num_train_timesteps: int) -> int:
    """The original timestep ``floor(strength * T)`` an img2img ``strength`` in (0, 1] starts at or below."""
    return math.floor(round(strength * num_train_timesteps, 6))


def sample_stage(request: StageRequest, memory_format: torch.memory_format) -> torch.Tensor:
    """Run one stage; (B, 3, H, W) samples in [-1, 1]."""
    scheduler, unet = request.scheduler, request.unet
    start = (None if request.image is None else
             strength_timestep(request.strength, scheduler.num_train_timesteps))
    scheduler.set_timesteps(request.steps, start_timestep=start)
    x = request.noise
    if request.image is not None:
        x = scheduler.add_noise(request.image, x, scheduler.timesteps[0])
    b = x.shape[0]
    guidance = request.guidance_scale
    cond = {k: torch.cat([v, v]) if guidance is not None else v for k, v in request.cond.items()}
    cond = {k: v.contiguous(memory_format=memory_format) for k, v in cond.items()}
    for t in tqdm(scheduler.timesteps, desc=request.desc, disable=not request.show_progress, leave=False):
        x_in = (torch.cat([x, x]) if guidance is not None else x).contiguous(memory_format=memory_format)
        out = unet(x_in, t.to(x.device).expand(x_in.shape[0]), text_emb=request.text_emb, **cond).float()
        if guidance is not None:
            eps_c, eps_u = out[:b, :3], out[b:, :3]
            out = torch.cat([eps_u + guidance * (eps_c - eps_u), out[:b, 3:]], dim=1)
        x = scheduler.step(out, t, x, generator=request.generator, denoised_fn=request.denoised_fn,
                           cond_fn=request.cond_fn).prev_sample
    return x


def build_sampler(base: GlideSchedulerBase, sampler: Union[None, str, dict]) -> GlideSchedulerBase:
    """``base``, or the sampler named by ``sampler`` on the same noise schedule."""
    if sampler is None:
        return base
    schedule = dict(num_train_timesteps=base.num_train_timesteps, beta_schedule=base.beta_schedule,
                    clip_sample=base.clip_sample)
    if isinstance(sampler, dict):
        return DIFFUSION_SCHEDULERS.build({**schedule, **sampler})
    if not isinstance(sampler, str) or sampler not in SAMPLERS:
        raise ValueError(f'sampler must be one of {sorted(SAMPLERS)} or a scheduler config dict, '
                         f'got {sampler!r}')
    return SAMPLERS[sampler](**schedule)


# ------------------------------------------------------------ input checks
def check_prompts(prompt: Optional[Prompt], batch_size: int, name: str = 'prompt') -> List[str]:
    """Validate ``prompt`` (str or list of str; None: '') and expand it to ``batch_size`` rows."""
    if prompt is None:
        prompt = ''
    if isinstance(prompt, str):
        return [prompt] * batch_size
    if not isinstance(prompt, (list, tuple)):
        raise TypeError(f'{name} must be a str or a list of str, got {type(prompt).__name__}')
    if len(prompt) == 0:
        raise ValueError(f'{name} is an empty list: give at least one prompt')
    bad = [type(p).__name__ for p in prompt if not isinstance(p, str)]
    if bad:
        raise TypeError(f'{name} must hold only str, found {bad[0]}')
    if len(prompt) != batch_size:
        raise ValueError(f'{name} has {len(prompt)} entries but batch_size is {batch_size}')
    return list(prompt)


def make_generator(seed: Optional[int], generator: Optional[torch.Generator],
                   device: torch.device) -> Optional[torch.Generator]:
    """A generator on ``device`` seeded with ``seed``, or ``generator`` (not both)."""
    if seed is not None and generator is not None:
        raise ValueError('pass seed or generator, not both')
    if seed is None:
        return generator
    return torch.Generator(device).manual_seed(int(seed))


def start_noise(init_image: Optional[torch.Tensor], shape: Tuple[int, ...], generator, device,
                scale: float = 1.) -> torch.Tensor:
    """The start noise x_T: ``init_image`` verbatim, else N(0, scale^2) draws."""
    if init_image is None:
        noise = torch.randn(shape, generator=generator, device=device)
        return noise * scale if scale != 1 else noise
    if not torch.is_tensor(init_image):
        raise TypeError(f'init_image must be a tensor, got {type(init_image).__name__}')
    if init_image.dim() == 4 and init_image.shape[0] == 2 * shape[0]:
        init_image = init_image[:shape[0]]  # upstream mmagic passes both CFG halves
    if tuple(init_image.shape) != tuple(shape):
        raise ValueError(f'init_image must have shape {tuple(shape)} (or twice the batch), '
                         f'got {tuple(init_image.shape)}')
    return init_image.to(device, torch.float32)


def _check_image(image: torch.Tensor, name: str, batch_size: int) -> None:
    """Errors unless ``image`` is (1|B, 3, H, W) in [-1, 1]."""
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f'{name} must be (B, 3, H, W) RGB in [-1, 1], got '
                         f'{tuple(image.shape)} (drop an alpha channel first)')
    if image.min() < -1 - 1e-3 or image.max() > 1 + 1e-3:
        raise ValueError(f'{name} must be in [-1, 1], got values in '
                         f'[{image.min().item():.3g}, {image.max().item():.3g}]')
    if image.shape[0] not in (1, batch_size):
        raise ValueError(f'{name} has batch {image.shape[0]}, expected 1 or {batch_size}')


def _resized(image: torch.Tensor, batch_size: int, size: int, device) -> torch.Tensor:
    """(1|B, 3, H, W) -> (B, 3, size, size) float32 (antialiased bilinear when resized)."""
    image = image.to(device, torch.float32).expand(batch_size, -1, -1, -1)
    if image.shape[-1] != size or image.shape[-2] != size:
        image = F.interpolate(image, (size, size), mode='bilinear', align_corners=False, antialias=True)
    return image


def inpaint_condition(unet: nn.Module, image: Optional[torch.Tensor], mask: Optional[torch.Tensor],
                      batch_size: int, size: int, device) -> Tuple[dict, Optional[Callable]]:
    """The UNet inputs and the x0 replacement of an inpainting request: the
    source (1|B, 3, H, W) in [-1, 1] and its mask (1|B, 1, H, W), 1 = keep
    (thresholded at 0.5), resized to ``size``; ``({}, None)`` without one."""
    inpainting_unet = isinstance(unet, (InpaintText2ImUNet, SuperResInpaintText2ImUNet))
    if image is None:
        if inpainting_unet:
            raise ValueError('this is an inpainting model: pass inpaint_image and inpaint_mask')
        return {}, None
    if not torch.is_tensor(image) or not torch.is_tensor(mask):
        raise TypeError('inpaint_image and inpaint_mask must both be tensors')
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f'inpaint_mask must be (B, 1, H, W), got {tuple(mask.shape)}')
    if image.dim() == 4 and image.shape[-2:] != mask.shape[-2:]:
        raise ValueError(f'inpaint_image is {tuple(image.shape[-2:])} but inpaint_mask is '
                         f'{tuple(mask.shape[-2:])}: they must have the same size')
    _check_image(image, 'inpaint_image', batch_size)
    if mask.shape[0] not in (1, batch_size):
        raise ValueError(f'inpaint_mask has batch {mask.shape[0]}, expected 1 or {batch_size}')
    known = image.shape[-1] == size and image.shape[-2] == size
    image = _resized(image, batch_size, size, device)
    mask = (mask.to(device, torch.float32) > 0.5).float().expand(batch_size, -1, -1, -1)
    if not known:
        mask = F.interpolate(mask, (size, size), mode='nearest')

    def keep_known(x0):
        return x0 * (1 - mask) + image * mask

    cond = dict(inpaint_image=image * mask, inpaint_mask=mask) if inpainting_unet else {}
    return cond, keep_known


def check_clip_guidance(labels, classifier_scale) -> float:
    """``classifier_scale`` as a float >= 0 (CLIP guidance's scale); errors for
    ``labels`` (class guidance does not exist in GLIDE) and for a negative,
    non-finite or non-numeric scale."""
    if labels is not None:
        raise ValueError('labels is not supported: GLIDE has no class-conditional guidance; CLIP '
                         'guidance is steered by the prompts (pass prompt and classifier_scale > 0, '
                         'leave labels=None)')
    if isinstance(classifier_scale, bool) or not isinstance(classifier_scale, (int, float)) \
            or not math.isfinite(classifier_scale) or classifier_scale < 0:
        raise ValueError(f'classifier_scale (the CLIP guidance scale) must be a finite number >= 0, '
                         f'got {classifier_scale!r}')
    return float(classifier_scale)


def check_strength(image: Optional[torch.Tensor], strength: Optional[float]) -> None:
    """Errors unless ``image`` and ``strength`` in (0, 1] come together (or neither)."""
    if (image is None) != (strength is None):
        raise ValueError('image and strength must be given together (img2img: strength in (0, 1])')
    if strength is None:
        return
    if not torch.is_tensor(image):
        raise TypeError(f'image must be a tensor, got {type(image).__name__}')
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise ValueError(f'strength must be in (0, 1], got {strength!r}')


def img2img_image(image: Optional[torch.Tensor], batch_size: int, size: int, device) -> Optional[torch.Tensor]:
    """An img2img source (1|B, 3, H, W) in [-1, 1] as (B, 3, size, size); None stays None."""
    if image is None:
        return None
    _check_image(image, 'image', batch_size)
    return _resized(image, batch_size, size, device)


def check_text_emb(text_emb: dict, batch_size: int, guided: bool) -> Dict[str, torch.Tensor]:
    """The precomputed text states ``infer`` uses: 2B rows (prompts, then
    unconditional prompts, as ``Glide.encode_prompt`` returns) with guidance;
    without, B rows (or 2B, of which the first B)."""
    if not isinstance(text_emb, dict) or not {'xf_proj', 'xf_out'} <= set(text_emb):
        raise TypeError('text_emb must be the dict Glide.encode_prompt returns (xf_proj, xf_out), got '
                        f'{type(text_emb).__name__}')
    rows = {k: text_emb[k].shape[0] for k in ('xf_proj', 'xf_out')}
    wanted = (2 * batch_size, ) if guided else (batch_size, 2 * batch_size)
    if rows['xf_proj'] != rows['xf_out'] or rows['xf_proj'] not in wanted:
        if guided:
            need = (f'with guidance it needs 2 * batch_size = {2 * batch_size} (the prompts, then the '
                    'unconditional prompts, as encode_prompt returns)')
        else:
            need = f'without guidance it needs batch_size = {batch_size} (or twice that)'
        raise ValueError(f'text_emb has {rows} rows; {need}')
    return {k: v[:wanted[0]] for k, v in text_emb.items()}
