"""Sampling for ``Glide``: the default options, one stage's loop and the
checks of the inputs ``infer`` takes.

A stage (base or upsampler) is a :class:`StageRequest` run by
:func:`sample_stage`: classifier-free guidance on the 3 eps channels (each
half keeps its own variance channels) as in openai/glide-text2im, CLIP
guidance through the scheduler's ``cond_fn``, the inpainting ``denoised_fn``, and the img2img start (SDEdit, Meng et al.
2022: the source image noised to a kept timestep, then the remaining steps), which also gives the upsampler its
short start from its own bicubic-upsampled input (:func:`low_res_start`).
"""
import math
import numbers
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmagic.registry import DIFFUSION_SCHEDULERS
from torch import nn
from tqdm import tqdm

from .diffusion import (
    GlideDDIMScheduler,
    GlideDDPMScheduler,
    GlideDPMSolverScheduler,
    GlideDPMSolverSDEScheduler,
    GlideSchedulerBase,
    respaced_timesteps,
)
from .prompting import Composition
from .unet import InpaintText2ImUNet, SuperResInpaintText2ImUNet

Prompt = Union[str, Sequence[str]]

#: the defaults of ``Glide.infer``/``predict`` and ``tools/glide_demo.py``
#: (a config's ``test_cfg`` overrides them): GLIDE's notebook settings
SAMPLING_DEFAULTS = dict(guidance_scale=3., num_inference_steps=50, num_inference_steps_up='fast27',
                         upsample_temp=0.997, upsample_strength=None)

#: how far an input image may stray outside [-1, 1] (the rounding of a conversion) before it is an error
IMAGE_RANGE_TOL = 1e-3

#: on a CPU, the most bytes the largest feature map of one UNet call may take when ``Glide.rows_per_call`` is
#: ``'auto'``: glibc hands out blocks over 32 MiB as fresh pages that the kernel faults in and zeroes at every
#: call (with 128 rows of the bundled model that took half of each call; docs/benchmarks.md, fourth round)
CPU_ROWS_BYTES = 24 * 2**20

#: names accepted by ``infer(sampler=...)``
SAMPLERS = {
    'ddim': GlideDDIMScheduler,
    'ddpm': GlideDDPMScheduler,
    'dpmsolver++': GlideDPMSolverScheduler,
    'dpmsolver++-sde': GlideDPMSolverSDEScheduler,
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
        composition: with composed prompts (``prompting.py``), how the
            R part rows and B unconditional rows of ``text_emb`` combine
            (then ``guidance_scale`` is unused), or None.
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
    composition: Optional[Composition] = None
    image: Optional[torch.Tensor] = None
    strength: Optional[float] = None
    show_progress: bool = False
    desc: str = ''


def strength_timestep(strength: float, num_train_timesteps: int) -> int:
    """The original timestep ``floor(strength * T)`` an img2img ``strength`` in (0, 1] starts at or below."""
    return math.floor(round(strength * num_train_timesteps, 6))


def call_in_slices(unet: nn.Module, x: torch.Tensor, t: torch.Tensor, text_emb: Dict[str, torch.Tensor],
                   cond: Dict[str, torch.Tensor], rows_per_call: Optional[int]) -> torch.Tensor:
    """``unet(x, t, text_emb=text_emb, **cond)`` for the N rows of x (and of
    t, every ``text_emb`` and ``cond`` tensor) in ceil(N / rows_per_call)
    near-equal slices (None: one call); rows are independent, so the result is
    the same up to float rounding."""
    n = x.shape[0]
    if rows_per_call is None or n <= rows_per_call:
        return unet(x, t, text_emb=text_emb, **cond)
    parts = -(-n // rows_per_call)
    edges = [n * i // parts for i in range(parts + 1)]
    outs = []
    for rows in (slice(lo, hi) for lo, hi in zip(edges, edges[1:])):
        outs.append(unet(x[rows], t[rows], text_emb={k: v[rows] for k, v in text_emb.items()},
                         **{k: v[rows] for k, v in cond.items()}))
    return torch.cat(outs)


def sample_stage(request: StageRequest, memory_format: torch.memory_format,
                 rows_per_call: Optional[int] = None) -> torch.Tensor:
    """Run one stage; (B, 3, H, W) samples clamped to [-1, 1] (with the
    scheduler's ``clip_sample`` the last x0 is clamped already; without it
    the chain may end outside the range the images are defined on). The UNet
    takes at most ``rows_per_call`` rows per call (:func:`call_in_slices`)."""
    scheduler, unet = request.scheduler, request.unet
    start = (None if request.image is None else
             strength_timestep(request.strength, scheduler.num_train_timesteps))
    scheduler.set_timesteps(request.steps, start_timestep=start)
    x = request.noise
    if request.image is not None:
        x = scheduler.add_noise(request.image, x, scheduler.timesteps[0])
    b = x.shape[0]
    guidance, composition = request.guidance_scale, request.composition
    if composition is not None:
        rows = composition.expand
    elif guidance is not None:
        def rows(v):
            return torch.cat([v, v])
    else:
        def rows(v):
            return v
    cond = {k: rows(v).contiguous(memory_format=memory_format) for k, v in request.cond.items()}
    for t in tqdm(scheduler.timesteps, desc=request.desc, disable=not request.show_progress, leave=False):
        x_in = rows(x).contiguous(memory_format=memory_format)
        out = call_in_slices(unet, x_in, t.to(x.device).expand(x_in.shape[0]), request.text_emb, cond,
                             rows_per_call).float()
        if composition is not None:
            out = composition.combine(out)
        elif guidance is not None:
            eps_c, eps_u = out[:b, :3], out[b:, :3]
            out = torch.cat([eps_u + guidance * (eps_c - eps_u), out[:b, 3:]], dim=1)
        x = scheduler.step(out, t, x, generator=request.generator, denoised_fn=request.denoised_fn,
                           cond_fn=request.cond_fn).prev_sample
    return x.clamp(-1, 1)


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
    """A generator on ``device`` seeded with ``seed`` (an int in torch's
    range [-2**63, 2**64)), or ``generator`` (a ``torch.Generator``; not both)."""
    if seed is not None and generator is not None:
        raise ValueError('pass seed or generator, not both')
    if generator is not None and not isinstance(generator, torch.Generator):
        hint = ' (pass an int as seed=)' if isinstance(generator, numbers.Number) else ''
        raise TypeError(f'generator must be a torch.Generator, got {_type_name(generator)}{hint}')
    if seed is None:
        return generator
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f'seed must be an int, got {seed!r} ({_type_name(seed)})')
    if not -2**63 <= seed < 2**64:
        raise ValueError(f'seed must be in [-2**63, 2**64), got {seed}')
    return torch.Generator(device).manual_seed(int(seed))


def check_noise(init_image: Optional[torch.Tensor], shape: Tuple[int, ...],
                name: str = 'init_image') -> Optional[torch.Tensor]:
    """A given start noise x_T: a finite float tensor of ``shape`` (or twice
    its batch, of which the first half); None stays None."""
    if init_image is None:
        return None
    check_tensor(init_image, name)
    if not init_image.is_floating_point():
        raise TypeError(f'{name} is the start noise x_T: it must be a float tensor, got {init_image.dtype}')
    if init_image.dim() == 4 and init_image.shape[0] == 2 * shape[0]:
        init_image = init_image[:shape[0]]  # upstream mmagic passes both CFG halves
    if tuple(init_image.shape) != tuple(shape):
        raise ValueError(f'{name} must have shape {tuple(shape)} (or twice the batch), '
                         f'got {tuple(init_image.shape)}')
    check_finite(init_image, name)
    return init_image


def start_noise(init_image: Optional[torch.Tensor], shape: Tuple[int, ...], generator, device,
                scale: float = 1.) -> torch.Tensor:
    """The start noise x_T: ``init_image`` verbatim (see :func:`check_noise`), else N(0, scale^2) draws."""
    if init_image is None:
        noise = torch.randn(shape, generator=generator, device=device)
        return noise * scale if scale != 1 else noise
    return check_noise(init_image, shape).to(device, torch.float32)


def _type_name(value) -> str:
    kind = type(value)
    return kind.__name__ if kind.__module__ == 'builtins' else f'{kind.__module__}.{kind.__name__}'


def check_tensor(value, name: str) -> torch.Tensor:
    """Errors unless ``value`` is a tensor (a numpy array is named as such)."""
    if not torch.is_tensor(value):
        hint = ' (convert it with torch.from_numpy)' if type(value).__module__ == 'numpy' else ''
        raise TypeError(f'{name} must be a tensor, got {_type_name(value)}{hint}')
    return value


def check_finite(tensor: torch.Tensor, name: str) -> None:
    """Errors if a float ``tensor`` holds NaN or inf (they would flow through to an all-NaN image)."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise ValueError(f'{name} holds NaN or inf values')


def check_number(value, name: str, minimum: Optional[float] = None) -> float:
    """``value`` as a finite float (>= ``minimum`` if given); errors name ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f'{name} must be a number, got {value!r} ({_type_name(value)})')
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        bound = '' if minimum is None else f' >= {minimum:g}'
        raise ValueError(f'{name} must be a finite number{bound}, got {value!r}')
    return float(value)


def check_steps(steps: Union[int, str], name: str, num_train_timesteps: int) -> None:
    """Errors, naming ``name``, unless ``steps`` is a valid respacing (int or spec such as 'fast27')."""
    try:
        respaced_timesteps(steps, num_train_timesteps)
    except (TypeError, ValueError) as err:
        raise type(err)(f'{name}: {err}') from None


def check_upsampler_inputs(unet_up: Optional[nn.Module], scheduler_up: Optional[GlideSchedulerBase],
                           batch_size: int, init_image: Optional[torch.Tensor], upsample_temp: float,
                           steps: Union[int, str], suffix: str = '') -> None:
    """The checks of the upsampler's arguments, named ``init_image{suffix}``
    and ``num_inference_steps{suffix}``: ``infer`` runs them (suffix
    ``'_up'``) before the base stage, so that a bad one fails at once and
    under its own name."""
    check_number(upsample_temp, 'upsample_temp', minimum=0)
    if unet_up is None:
        return
    size = unet_up.image_size
    check_noise(init_image, (batch_size, 3, size, size), f'init_image{suffix}')
    check_steps(steps, f'num_inference_steps{suffix}', scheduler_up.num_train_timesteps)


def check_infer_args(model: nn.Module, batch_size: int, guidance_scale: float, steps: Union[int, str],
                     init_image_up: Optional[torch.Tensor], upsample_temp: float,
                     steps_up: Union[int, str]) -> Optional[float]:
    """``Glide.infer``'s checks of the guidance scale, the steps and the
    upsampler's arguments, before any work; returns the guidance scale as a
    float, None for 1 (no guidance)."""
    guidance = check_number(guidance_scale, 'guidance_scale')
    check_steps(steps, 'num_inference_steps', model.diffusion_scheduler.num_train_timesteps)
    check_upsampler_inputs(model.unet_up, model.diffusion_scheduler_up, batch_size, init_image_up,
                           upsample_temp, steps_up, suffix='_up')
    return None if guidance == 1 else guidance


def check_infer_up_args(model: nn.Module, low_res_img: torch.Tensor, batch_size: Optional[int],
                        init_image: Optional[torch.Tensor], upsample_temp: float, steps: Union[int, str]) -> int:
    """``Glide.infer_up``'s checks (:func:`check_low_res` and the upsampler's
    arguments) before any work; returns the batch size B."""
    batch_size = check_low_res(low_res_img, batch_size)
    check_upsampler_inputs(model.unet_up, model.diffusion_scheduler_up, batch_size, init_image, upsample_temp,
                           steps)
    return batch_size


def check_image(image: torch.Tensor, name: str, batch_size: int) -> None:
    """Errors unless ``image`` is a finite float tensor (1|B, 3, H, H) in
    [-1, 1] (up to ``IMAGE_RANGE_TOL``): a uint8 image or a float one in
    [0, 255] would otherwise be used as it is."""
    check_tensor(image, name)
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f'{name} must be (B, 3, H, W) RGB in [-1, 1], got '
                         f'{tuple(image.shape)} (drop an alpha channel first)')
    if not image.is_floating_point():
        raise TypeError(f'{name} must be a float image in [-1, 1], got {image.dtype}: convert it first '
                        '(uint8: image.float() / 127.5 - 1)')
    if image.shape[-1] != image.shape[-2]:
        raise ValueError(f'{name} must be square (H = W), got {image.shape[-2]}x{image.shape[-1]}: crop or '
                         'pad it first')
    check_finite(image, name)
    if image.min() < -1 - IMAGE_RANGE_TOL or image.max() > 1 + IMAGE_RANGE_TOL:
        raise ValueError(f'{name} must be in [-1, 1], got values in '
                         f'[{image.min().item():.3g}, {image.max().item():.3g}] (an image in [0, 255]: '
                         'divide by 127.5 and subtract 1)')
    if image.shape[0] not in (1, batch_size):
        raise ValueError(f'{name} has batch {image.shape[0]}, expected 1 or {batch_size}')


def check_batch_size(batch_size) -> int:
    """Errors unless ``batch_size`` is a positive int."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f'batch_size must be a positive int, got {batch_size!r}')
    return batch_size


def check_low_res(low_res_img: torch.Tensor, batch_size: Optional[int]) -> int:
    """``infer_up``'s input, (B, 3, h, h) float in [-1, 1] (see :func:`check_image`);
    returns B, which ``batch_size`` (None: B) must equal."""
    check_tensor(low_res_img, 'low_res_img')
    rows = low_res_img.shape[0] if low_res_img.dim() == 4 else 1
    check_image(low_res_img, 'low_res_img', rows)
    if batch_size is None:
        return rows
    if check_batch_size(batch_size) != rows:
        raise ValueError(f'low_res_img has {rows} images but batch_size is {batch_size}')
    return rows


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
    check_tensor(image, 'inpaint_image')
    check_tensor(mask, 'inpaint_mask')
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f'inpaint_mask must be (B, 1, H, W), got {tuple(mask.shape)}')
    if image.dim() == 4 and image.shape[-2:] != mask.shape[-2:]:
        raise ValueError(f'inpaint_image is {tuple(image.shape[-2:])} but inpaint_mask is '
                         f'{tuple(mask.shape[-2:])}: they must have the same size')
    check_image(image, 'inpaint_image', batch_size)
    check_finite(mask, 'inpaint_mask')
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
    check_tensor(image, 'image')
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise ValueError(f'strength must be in (0, 1], got {strength!r}')


def check_upsample_strength(upsample_strength: Optional[float], image: Optional[torch.Tensor]) -> None:
    """Errors unless ``upsample_strength`` is None or in (0, 1], and not given
    together with an img2img ``image`` (both would set the upsampler's start)."""
    if upsample_strength is None:
        return
    if isinstance(upsample_strength, bool) or not isinstance(upsample_strength, numbers.Real) \
            or not 0 < upsample_strength <= 1:
        raise ValueError(f'upsample_strength must be None or in (0, 1], got {upsample_strength!r}')
    if image is not None:
        raise ValueError('upsample_strength starts the upsampler from its low-res input, image/strength (img2img) '
                         'from image: pass one of them (upsample_strength=None with image)')


def low_res_start(low_res: torch.Tensor, size: int) -> torch.Tensor:
    """The upsampler's low-res input (B, 3, h, h) in [-1, 1], upsampled bicubically to (B, 3, size, size)
    and clamped: the start image of ``upsample_strength`` (why: its steps from pure noise only redraw what
    the low-res input already fixes; Chung et al. 2022, "Come-Closer-Diffuse-Faster", start super-resolution
    from such a noised estimate)."""
    return F.interpolate(low_res, size=(size, size), mode='bicubic', align_corners=False).clamp(-1, 1)


def img2img_image(image: Optional[torch.Tensor], batch_size: int, size: int, device) -> Optional[torch.Tensor]:
    """An img2img source (1|B, 3, H, W) in [-1, 1] as (B, 3, size, size); None stays None."""
    if image is None:
        return None
    check_image(image, 'image', batch_size)
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
