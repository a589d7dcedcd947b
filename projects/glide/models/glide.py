"""The GLIDE cascade as an mmengine model: sampling, training and testing.

Sampling reproduces openai/glide-text2im's notebooks: classifier-free
guidance on the 3 eps channels (each half keeps its own variance channels),
the unconditional branch conditioned on the empty prompt (or a negative
prompt), then the 64->256 upsampler conditioned on the real prompt with the
low-resolution sample quantised to 8 bits and the start noise scaled by
``upsample_temp``. Inpainting replaces the known region of every predicted x0
with the source image (the reference's ``denoised_fn``).
"""
import contextlib
import copy
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from tqdm import tqdm

from mmagic.registry import DIFFUSION_SCHEDULERS, MODELS

from ..checkpoint import check_state_dict
from ..images import quantize_8bit, to_uint8
from .diffusion import GlideDDIMScheduler, GlideDDPMScheduler, GlideDPMSolverScheduler
from .grounding import off_phrase_attention_loss, recorded_text_attention, token_grounding_loss
from .tokenizer import GlideTokenizer
from .unet import InpaintText2ImUNet, SuperResInpaintText2ImUNet

Prompt = Union[str, Sequence[str]]

#: names accepted by ``infer(sampler=...)``
SAMPLERS = {
    'ddim': GlideDDIMScheduler,
    'ddpm': GlideDDPMScheduler,
    'dpmsolver++': GlideDPMSolverScheduler,
}


def _build(registry, cfg):
    return cfg if not isinstance(cfg, dict) else registry.build(copy.deepcopy(cfg))


@MODELS.register_module(name=['Glide', 'GLIDE'])
class Glide(BaseModel):
    """GLIDE: text-conditioned base model plus an optional 64->256 upsampler.

    Args:
        unet (dict | nn.Module): the base UNet (``Text2ImUNet`` or
            ``InpaintText2ImUNet``).
        diffusion_scheduler (dict): sampler of the base stage, e.g.
            ``dict(type='GlideDDIMScheduler', beta_schedule='squaredcos_cap_v2')``.
        unet_up (dict | nn.Module | None): the upsampler UNet.
        diffusion_scheduler_up (dict | None): sampler of the upsampler
            (``beta_schedule='linear'``).
        tokenizer (dict): the tokenizer (GPT-2 BPE shipped with the package).
        dtype (str): ``'fp32'`` (default), ``'fp16'`` or ``'bf16'`` for both
            UNets and the text transformer.
        use_fp16 (bool): mmagic spelling of ``dtype='fp16'``.
        memory_format (str): ``'contiguous'`` (default, NCHW) or
            ``'channels_last'`` (NHWC) for the UNets' convolution weights and
            the images fed to them while sampling (see
            :meth:`set_memory_format`).
        train_cfg (dict | None): ``stage`` ('base' or 'upsampler', which UNet
            ``train_step`` trains), ``caption_dropout`` (probability of
            training on the empty prompt, which classifier-free guidance
            needs), ``high_noise_prob`` and ``high_noise_from`` (see
            :meth:`sample_train_timesteps`; default 0, GLIDE's uniform
            timesteps) and ``max_mse_weight`` (see :meth:`mse_weights`;
            default None, GLIDE's unweighted eps MSE), ``offset_noise`` (see
            :meth:`train_noise`; default 0, GLIDE's white noise),
            ``coarse_noise`` and ``coarse_noise_grid`` (see
            :meth:`train_noise`; default 0, none) and
            ``foreground_weight`` and ``kind_weight`` (see
            :meth:`pixel_weights`; default 0, every pixel alike) and
            ``grounding_weight``, ``grounding_sides`` and
            ``grounding_max_timestep`` (see :meth:`grounding_loss`; default
            0, none) and ``off_phrase_weight`` (see :meth:`off_phrase_loss`,
            on the same sides and rows; default 0, none).
        test_cfg (dict | None): default keyword arguments of :meth:`infer` for
            ``val_step``/``test_step`` (``guidance_scale``, ``num_inference_steps``...).
        data_preprocessor (dict | None): defaults to mmengine's
            ``BaseDataPreprocessor`` (moves the batch to the device).
    """

    def __init__(self,
                 unet: dict,
                 diffusion_scheduler: dict,
                 unet_up: Optional[dict] = None,
                 diffusion_scheduler_up: Optional[dict] = None,
                 tokenizer: dict = dict(type='GlideTokenizer'),
                 dtype: str = 'fp32',
                 use_fp16: bool = False,
                 memory_format: str = 'contiguous',
                 train_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None):
        super().__init__(data_preprocessor=data_preprocessor or dict(type='BaseDataPreprocessor'),
                         init_cfg=init_cfg)
        self.unet = _build(MODELS, unet)
        self.diffusion_scheduler = _build(DIFFUSION_SCHEDULERS, diffusion_scheduler)
        self.unet_up = _build(MODELS, unet_up) if unet_up is not None else None
        if (unet_up is None) != (diffusion_scheduler_up is None):
            raise ValueError('unet_up and diffusion_scheduler_up must be given together')
        self.diffusion_scheduler_up = (_build(DIFFUSION_SCHEDULERS, diffusion_scheduler_up)
                                       if diffusion_scheduler_up is not None else None)
        self.tokenizer = _build(MODELS, tokenizer)
        if not isinstance(self.tokenizer, GlideTokenizer):
            raise TypeError(f'tokenizer must build a GlideTokenizer, got {type(self.tokenizer).__name__}')
        self.train_cfg = {**dict(stage='base', caption_dropout=0.2, high_noise_prob=0.,
                                 high_noise_from=900, max_mse_weight=None, offset_noise=0.,
                                 coarse_noise=0., coarse_noise_grid=4, foreground_weight=0.,
                                 kind_weight=0., grounding_weight=0., grounding_sides=None,
                                 grounding_max_timestep=None, off_phrase_weight=0.),
                          **(train_cfg or {})}
        if not 0 <= self.train_cfg['high_noise_prob'] <= 1:
            raise ValueError('train_cfg.high_noise_prob must be in [0, 1], got '
                             f"{self.train_cfg['high_noise_prob']}")
        for key in ('offset_noise', 'coarse_noise', 'foreground_weight', 'kind_weight',
                    'grounding_weight', 'off_phrase_weight'):
            if not self.train_cfg[key] >= 0:
                raise ValueError(f'train_cfg.{key} must be >= 0, got {self.train_cfg[key]}')
        max_t = self.train_cfg['grounding_max_timestep']
        if max_t is not None and (isinstance(max_t, bool) or not isinstance(max_t, int) or max_t < 0):
            raise ValueError(f'train_cfg.grounding_max_timestep must be None or an int >= 0, got {max_t!r}')
        grid = self.train_cfg['coarse_noise_grid']
        if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
            raise ValueError(f'train_cfg.coarse_noise_grid must be an int >= 1, got {grid!r}')
        if self.train_cfg['high_noise_prob'] > 0:
            num_timesteps = self._stage(self.train_cfg['stage'])[1].train_diffusion.num_timesteps
            if not 0 <= self.train_cfg['high_noise_from'] < num_timesteps:
                raise ValueError(f'train_cfg.high_noise_from must be in [0, {num_timesteps}), '
                                 f"got {self.train_cfg['high_noise_from']}")
        self.test_cfg = dict(test_cfg or {})
        self.set_dtype('fp16' if use_fp16 else dtype)
        self.set_memory_format(memory_format)
        self._register_load_state_dict_pre_hook(self._check_checkpoint, with_module=False)

    # ------------------------------------------------------------ utilities
    def set_dtype(self, dtype: str) -> 'Glide':
        """Run both UNets and their text transformers in ``'fp32'``, ``'fp16'`` or ``'bf16'``."""
        for unet in (self.unet, self.unet_up):
            if unet is not None:
                unet.set_dtype(dtype)
        return self

    def set_memory_format(self, memory_format: str) -> 'Glide':
        """Lay out the UNets' 4-D weights and sampled images as
        ``'contiguous'`` (NCHW) or ``'channels_last'`` (NHWC).

        cuDNN's and oneDNN's fastest half-precision convolutions work on
        NHWC; with NCHW tensors each convolution may transpose its input
        and output. Results agree with ``'contiguous'`` up to float
        rounding.
        """
        formats = {'contiguous': torch.contiguous_format, 'channels_last': torch.channels_last}
        if memory_format not in formats:
            raise ValueError(f'memory_format must be one of {sorted(formats)}, got {memory_format!r}')
        self.memory_format = memory_format
        self._torch_memory_format = formats[memory_format]
        for unet in (self.unet, self.unet_up):
            if unet is not None:
                unet.to(memory_format=self._torch_memory_format)
        return self

    def to(self, *args, **kwargs) -> 'Glide':
        """``nn.Module.to``, except that a CUDA device on a machine without
        CUDA keeps the model on the CPU with a warning: ``mmagic.apis.init_model``
        moves models to ``'cuda:0'`` by default, which would otherwise make
        ``init_model(config, ckpt).cpu()`` fail on CPU-only machines.
        (``.cuda()`` itself still fails loudly there.)"""
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        if device is not None and device.type == 'cuda' and not torch.cuda.is_available():
            warnings.warn(f'{device} was requested but CUDA is not available: the GLIDE model '
                          'stays on the CPU (pass device="cpu" to init_model to silence this)')
            args = tuple(a for a in args if not isinstance(a, (str, torch.device)))
            kwargs.pop('device', None)
        return super().to(*args, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.unet.token_embedding.weight.device

    def _check_checkpoint(self, state_dict, prefix, *args):
        """Refuse any checkpoint whose keys or shapes differ from this model's."""
        if prefix:
            return
        expected = {k: v.shape for k, v in self.state_dict().items()}
        check_state_dict(expected, state_dict)

    @staticmethod
    def _prompts(prompt: Optional[Prompt], batch_size: int, name: str = 'prompt') -> List[str]:
        """Validate ``prompt`` (str or list of str) and expand it to ``batch_size`` rows."""
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

    def _generator(self, seed: Optional[int], generator: Optional[torch.Generator]):
        if seed is not None and generator is not None:
            raise ValueError('pass seed or generator, not both')
        if seed is None:
            return generator
        return torch.Generator(self.device).manual_seed(int(seed))

    def _start_noise(self, init_image, shape, generator, scale: float = 1.) -> torch.Tensor:
        """The start noise x_T: ``init_image`` verbatim, else N(0, scale^2) draws."""
        if init_image is None:
            noise = torch.randn(shape, generator=generator, device=self.device)
            return noise * scale if scale != 1 else noise
        if not torch.is_tensor(init_image):
            raise TypeError(f'init_image must be a tensor, got {type(init_image).__name__}')
        if init_image.dim() == 4 and init_image.shape[0] == 2 * shape[0]:
            init_image = init_image[:shape[0]]  # upstream mmagic passes both CFG halves
        if tuple(init_image.shape) != tuple(shape):
            raise ValueError(f'init_image must have shape {tuple(shape)} (or twice the batch), '
                             f'got {tuple(init_image.shape)}')
        return init_image.to(self.device, torch.float32)

    @staticmethod
    def _inpaint_inputs(image, mask, batch_size, size, device):
        """Validate and resize an inpainting source (B|1,3,H,W) in [-1, 1] and
        its mask (B|1,1,H,W), 1 = keep, to ``size``; the mask is thresholded at 0.5."""
        if not torch.is_tensor(image) or not torch.is_tensor(mask):
            raise TypeError('inpaint_image and inpaint_mask must both be tensors')
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f'inpaint_image must be (B, 3, H, W) RGB in [-1, 1], got '
                             f'{tuple(image.shape)} (drop an alpha channel first)')
        if mask.dim() != 4 or mask.shape[1] != 1:
            raise ValueError(f'inpaint_mask must be (B, 1, H, W), got {tuple(mask.shape)}')
        if image.shape[-2:] != mask.shape[-2:]:
            raise ValueError(f'inpaint_image is {tuple(image.shape[-2:])} but inpaint_mask is '
                             f'{tuple(mask.shape[-2:])}: they must have the same size')
        if image.min() < -1 - 1e-3 or image.max() > 1 + 1e-3:
            raise ValueError(f'inpaint_image must be in [-1, 1], got values in '
                             f'[{image.min().item():.3g}, {image.max().item():.3g}]')
        for t, name in ((image, 'inpaint_image'), (mask, 'inpaint_mask')):
            if t.shape[0] not in (1, batch_size):
                raise ValueError(f'{name} has batch {t.shape[0]}, expected 1 or {batch_size}')
        image = image.to(device, torch.float32).expand(batch_size, -1, -1, -1)
        mask = (mask.to(device, torch.float32) > 0.5).float().expand(batch_size, -1, -1, -1)
        if image.shape[-1] != size or image.shape[-2] != size:
            image = F.interpolate(image, (size, size), mode='bilinear', align_corners=False,
                                  antialias=True)
            mask = F.interpolate(mask, (size, size), mode='nearest')
        return image, mask

    def _sample(self, unet, scheduler, x, text_emb, steps, guidance_scale, generator,
                cond: Dict[str, torch.Tensor], denoised_fn: Optional[Callable], show_progress, desc):
        """The sampling loop of one stage.

        ``text_emb`` holds 2B rows (conditional then unconditional) when
        ``guidance_scale`` is not None, else B rows.
        """
        scheduler.set_timesteps(steps)
        b = x.shape[0]
        guided = guidance_scale is not None
        if guided:
            cond = {k: torch.cat([v, v]) for k, v in cond.items()}
        layout = self._torch_memory_format
        cond = {k: v.contiguous(memory_format=layout) for k, v in cond.items()}
        for t in tqdm(scheduler.timesteps, desc=desc, disable=not show_progress, leave=False):
            x_in = (torch.cat([x, x]) if guided else x).contiguous(memory_format=layout)
            out = unet(x_in, t.to(self.device).expand(x_in.shape[0]), text_emb=text_emb, **cond).float()
            if guided:
                eps_c, eps_u = out[:b, :3], out[b:, :3]
                out = torch.cat([eps_u + guidance_scale * (eps_c - eps_u), out[:b, 3:]], dim=1)
            x = scheduler.step(out, t, x, generator=generator, denoised_fn=denoised_fn).prev_sample
        return x

    def _scheduler(self, sampler):
        """The base stage's scheduler, or one named by ``sampler`` on the same schedule."""
        if sampler is None:
            return self.diffusion_scheduler
        base = self.diffusion_scheduler
        schedule = dict(num_train_timesteps=base.num_train_timesteps, beta_schedule=base.beta_schedule,
                        clip_sample=base.clip_sample)
        if isinstance(sampler, dict):
            return DIFFUSION_SCHEDULERS.build({**schedule, **sampler})
        if not isinstance(sampler, str) or sampler not in SAMPLERS:
            raise ValueError(f'sampler must be one of {sorted(SAMPLERS)} or a scheduler config dict, '
                             f'got {sampler!r}')
        return SAMPLERS[sampler](**schedule)

    def _text(self, unet, prompts: List[str], negative: Optional[List[str]]):
        tokens, mask = self.tokenizer(prompts + (negative or []), device=self.device)
        return unet.encode_text(tokens, mask)

    # -------------------------------------------------------------- sampling
    @torch.no_grad()
    def infer(self,
              init_image: Optional[torch.Tensor] = None,
              prompt: Optional[Prompt] = None,
              batch_size: int = 1,
              guidance_scale: float = 3.,
              num_inference_steps: Union[int, str] = 50,
              num_inference_steps_up: Union[int, str] = 'fast27',
              labels: Optional[torch.Tensor] = None,
              classifier_scale: float = 0.0,
              show_progress: bool = False,
              negative_prompt: Optional[Prompt] = None,
              seed: Optional[int] = None,
              generator: Optional[torch.Generator] = None,
              upsample_temp: float = 0.997,
              init_image_up: Optional[torch.Tensor] = None,
              inpaint_image: Optional[torch.Tensor] = None,
              inpaint_mask: Optional[torch.Tensor] = None,
              sampler: Union[None, str, dict] = None) -> Dict[str, torch.Tensor]:
        """Text to image: the base stage, then the upsampler if the model has one.

        Args:
            init_image (Tensor | None): start noise x_T (B, 3, 64, 64), used
                verbatim; (2B, ...) is accepted too (first half used).
            prompt (str | list[str]): one prompt repeated ``batch_size`` times,
                or B prompts.
            batch_size (int): number of images B.
            guidance_scale (float): classifier-free guidance scale (1 = off).
            num_inference_steps (int | str): base steps: an int N is N evenly
                strided timesteps; a str is a respacing spec ('100', 'ddim50',
                'fast27', '10,10,3,2,2').
            num_inference_steps_up (int | str): upsampler steps ('fast27').
            labels, classifier_scale: kept for mmagic compatibility; CLIP
                guidance is not supported (``labels`` must be None and
                ``classifier_scale`` 0).
            show_progress (bool): a progress bar per stage.
            negative_prompt (str | list[str] | None): the unconditional branch's
                prompt (default: the empty prompt).
            seed (int | None) / generator (torch.Generator | None): noise source.
            upsample_temp (float): scale of the upsampler's drawn start noise.
            init_image_up (Tensor | None): upsampler start noise (B, 3, 256, 256),
                used verbatim.
            inpaint_image (Tensor | None): (1|B, 3, H, W) source in [-1, 1] for
                inpainting (any H=W; resized per stage).
            inpaint_mask (Tensor | None): (1|B, 1, H, W), 1 = keep (thresholded
                at 0.5).
            sampler (str | dict | None): the base stage's sampler instead of
                the config's: ``'ddim'``, ``'ddpm'`` (ancestral), ``'dpmsolver++'``
                (DPM-Solver++(2M)) or a scheduler config dict; same noise schedule.

        Returns:
            dict: ``samples`` (B, 3, H, W) in [-1, 1] (256 with an upsampler,
            else 64); with an upsampler also ``low_res`` (B, 3, 64, 64).
        """
        if labels is not None or classifier_scale:
            raise ValueError('CLIP/classifier guidance is not supported: GLIDE\'s released models '
                             'use classifier-free guidance; leave labels=None, classifier_scale=0')
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f'batch_size must be a positive int, got {batch_size!r}')
        if isinstance(prompt, (list, tuple)) and batch_size == 1:
            batch_size = len(prompt) or 1
        prompts = self._prompts(prompt, batch_size)
        negative = self._prompts(negative_prompt, batch_size, 'negative_prompt')
        generator = self._generator(seed, generator)
        if (inpaint_image is None) != (inpaint_mask is None):
            raise ValueError('inpaint_image and inpaint_mask must be given together')

        size = self.unet.image_size
        x_t = self._start_noise(init_image, (batch_size, 3, size, size), generator)
        guidance = None if guidance_scale == 1 else float(guidance_scale)
        text_emb = self._text(self.unet, prompts, negative if guidance is not None else None)
        cond, denoised_fn = self._inpaint_cond(self.unet, inpaint_image, inpaint_mask, batch_size, size)
        samples = self._sample(self.unet, self._scheduler(sampler), x_t, text_emb, num_inference_steps,
                               guidance, generator, cond, denoised_fn, show_progress, 'GLIDE base')
        if self.unet_up is None:
            return dict(samples=samples)
        up = self.infer_up(samples, batch_size, init_image_up, prompts, num_inference_steps_up,
                           show_progress, upsample_temp=upsample_temp, generator=generator,
                           inpaint_image=inpaint_image, inpaint_mask=inpaint_mask)
        return dict(samples=up['samples'], low_res=samples)

    def _inpaint_cond(self, unet, image, mask, batch_size, size):
        """Conditioning inputs and the x0 replacement of an inpainting request."""
        if image is None:
            if isinstance(unet, (InpaintText2ImUNet, SuperResInpaintText2ImUNet)):
                raise ValueError('this is an inpainting model: pass inpaint_image and inpaint_mask')
            return {}, None
        image, mask = self._inpaint_inputs(image, mask, batch_size, size, self.device)

        def keep_known(x0):
            return x0 * (1 - mask) + image * mask

        cond = {}
        if isinstance(unet, (InpaintText2ImUNet, SuperResInpaintText2ImUNet)):
            cond = dict(inpaint_image=image * mask, inpaint_mask=mask)
        return cond, keep_known

    @torch.no_grad()
    def infer_up(self,
                 low_res_img: torch.Tensor,
                 batch_size: Optional[int] = None,
                 init_image: Optional[torch.Tensor] = None,
                 prompt: Optional[Prompt] = None,
                 num_inference_steps: Union[int, str] = 'fast27',
                 show_progress: bool = False,
                 upsample_temp: float = 0.997,
                 seed: Optional[int] = None,
                 generator: Optional[torch.Generator] = None,
                 inpaint_image: Optional[torch.Tensor] = None,
                 inpaint_mask: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Upsample any (B, 3, 64, 64) batch in [-1, 1] to 256x256.

        The low-resolution input is quantised to 8 bits, the drawn start noise
        is scaled by ``upsample_temp`` (``init_image`` is used verbatim), and
        the UNet is conditioned on ``prompt`` without guidance.

        Returns:
            dict: ``samples`` (B, 3, 256, 256) in [-1, 1].
        """
        if self.unet_up is None:
            raise RuntimeError('this model has no upsampler: use a 64-256 config')
        if not torch.is_tensor(low_res_img) or low_res_img.dim() != 4 or low_res_img.shape[1] != 3:
            raise ValueError('low_res_img must be a (B, 3, h, w) tensor in [-1, 1], got '
                             f'{getattr(low_res_img, "shape", type(low_res_img).__name__)}')
        batch_size = batch_size or low_res_img.shape[0]
        if low_res_img.shape[0] != batch_size:
            raise ValueError(f'low_res_img has {low_res_img.shape[0]} images but batch_size is '
                             f'{batch_size}')
        prompts = self._prompts(prompt, batch_size)
        generator = self._generator(seed, generator)
        size = self.unet_up.image_size
        x_t = self._start_noise(init_image, (batch_size, 3, size, size), generator, upsample_temp)
        low_res = quantize_8bit(low_res_img.to(self.device, torch.float32))
        text_emb = self._text(self.unet_up, prompts, None)
        cond, denoised_fn = self._inpaint_cond(self.unet_up, inpaint_image, inpaint_mask,
                                               batch_size, size)
        cond['low_res'] = low_res
        samples = self._sample(self.unet_up, self.diffusion_scheduler_up, x_t, text_emb,
                               num_inference_steps, None, generator, cond, denoised_fn,
                               show_progress, 'GLIDE upsampler')
        return dict(samples=samples)

    # ---------------------------------------------------- training / testing
    def forward(self, inputs=None, data_samples=None, mode: str = 'tensor', **batch):
        """mmengine entry point; ``batch`` is a collated dataset batch.

        Args:
            mode (str): ``'loss'`` -> dict of training losses;
                ``'predict'`` -> list of per-item result dicts (see
                :meth:`predict`); ``'tensor'`` -> the sampled images
                (B, 3, H, W) in [-1, 1].
            **batch: ``prompt`` (list[str]) and, for training, ``img``
                (B, 3, H, W) in [-1, 1] (``low_res`` (B, 3, 64, 64) for the
                upsampler); for prediction optionally ``seed``/``index``
                (list[int]).
        """
        if inputs is not None:
            batch.setdefault('img', inputs)
        if mode == 'loss':
            return self.loss(batch)
        if mode == 'predict':
            return self.predict(batch)
        if mode == 'tensor':
            return torch.stack([item['image'] for item in self.predict(batch)]).float() / 127.5 - 1
        raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', got {mode!r}")

    def _stage(self, stage: str):
        if stage == 'base':
            return self.unet, self.diffusion_scheduler
        if stage == 'upsampler':
            if self.unet_up is None:
                raise ValueError("train_cfg.stage='upsampler' but the model has no unet_up")
            return self.unet_up, self.diffusion_scheduler_up
        raise ValueError(f"train_cfg.stage must be 'base' or 'upsampler', got {stage!r}")

    def loss(self, batch: dict) -> Dict[str, torch.Tensor]:
        """GLIDE's hybrid training loss (eps MSE + variational bound for the
        learned variance) on uniformly drawn timesteps of the full process,
        with the prompt dropped to '' with probability ``caption_dropout``;
        plus ``loss_grounding`` when ``train_cfg.grounding_weight`` > 0 and
        ``loss_off_phrase`` when ``train_cfg.off_phrase_weight`` > 0."""
        unet, scheduler = self._stage(self.train_cfg['stage'])
        diffusion = scheduler.train_diffusion
        x0 = batch['img'].to(self.device, torch.float32)
        b = x0.shape[0]
        prompts = list(batch['prompt'])
        drop = torch.rand(b) < self.train_cfg['caption_dropout']
        prompts = ['' if d else p for p, d in zip(prompts, drop.tolist())]
        tokens, mask = self.tokenizer(prompts, device=self.device)
        t = self.sample_train_timesteps(b, diffusion.num_timesteps)
        noise = self.train_noise(x0)
        x_t = diffusion.q_sample(x0, t, noise)
        cond = {}
        if unet is self.unet_up:
            cond['low_res'] = quantize_8bit(batch['low_res'].to(self.device, torch.float32))
        grounding, off_phrase = self.train_cfg['grounding_weight'], self.train_cfg['off_phrase_weight']
        with (recorded_text_attention(unet, self.train_cfg['grounding_sides']) if grounding or off_phrase
              else contextlib.nullcontext()) as attention:
            out = unet(x_t, t, tokens, mask, **cond)
        losses = diffusion.training_losses(out.float(), x0, x_t, t, noise,
                                           pixel_weights=self.pixel_weights(x0, batch.get('kind_mask')))
        mse = losses['mse'] * self.mse_weights(diffusion.inverse_snr(t, b).to(self.device))
        result = dict(loss_mse=mse.mean(), loss_vb=losses['vb'].mean())
        keep = ~drop.to(self.device)
        if self.train_cfg['grounding_max_timestep'] is not None:
            keep = keep & (t <= self.train_cfg['grounding_max_timestep'])
        if grounding:
            result['loss_grounding'] = grounding * self.grounding_loss(attention, batch, keep)
        if off_phrase:
            result['loss_off_phrase'] = off_phrase * self.off_phrase_loss(attention, batch, keep, mask)
        return result

    def off_phrase_loss(self, attention: List[tuple], batch: dict, keep: torch.Tensor,
                        token_mask: torch.Tensor) -> torch.Tensor:
        """The mean :func:`~.grounding.off_phrase_attention_loss` of the
        objects of ``batch['grounding_tokens']`` ((B, S, W) text positions)
        on the region of each object's last word in ``batch['grounding_masks']``
        (B, S, W, R, R) (the shape's box with ``ShapesDataset(grounding=True,
        grounding_kind_region='box')``, whose last word is the kind word); over
        the rows ``keep`` (as for :meth:`grounding_loss`), the objects and the
        recorded ``attention``; ``token_mask`` (B, T) marks the caption's
        tokens. Not in GLIDE: see the ``grounding`` module for why.
        """
        self._check_grounding_batch(batch, attention, 'off_phrase_weight')
        masks = batch['grounding_masks']
        if masks.dim() != 5:
            raise ValueError("train_cfg.off_phrase_weight > 0 needs a region per word in 'grounding_masks' "
                             f'(B, S, W, R, R), e.g. ShapesDataset(grounding_kind_region=\'box\'); got '
                             f'{tuple(masks.shape)}')
        positions = batch['grounding_tokens'].to(self.device)
        boxes = masks[:, :, -1].to(self.device)
        return self._mean_over_blocks(
            attention, keep, lambda weights: off_phrase_attention_loss(weights, positions, boxes, token_mask))

    @staticmethod
    def _mean_over_blocks(attention: List[tuple], keep: torch.Tensor, block_loss: Callable) -> torch.Tensor:
        """The mean over the recorded ``attention`` blocks of the loss
        ``block_loss(weights)`` returns with its ``valid`` mask (both (B, ...)),
        each averaged over its valid entries in the rows ``keep`` (B,) bool."""
        total = 0.
        for _, weights in attention:
            loss, valid = block_loss(weights)
            valid = valid & keep.to(valid.device).view(-1, *[1] * (valid.dim() - 1))
            total = total + (loss * valid).sum() / valid.sum().clamp(min=1)
        return total / len(attention)

    def _check_grounding_batch(self, batch: dict, attention: List[tuple], weight: str) -> None:
        """Errors that name what a grounding loss (``train_cfg.<weight>`` > 0) lacks."""
        missing = [k for k in ('grounding_tokens', 'grounding_masks') if k not in batch]
        if missing:
            raise ValueError(f"train_cfg.{weight} > 0 needs {' and '.join(map(repr, missing))} in "
                             'the batch, e.g. from ShapesDataset(grounding=True)')
        if not attention:
            raise ValueError(f'train_cfg.{weight} > 0 needs text attention blocks; the UNet has '
                             f"none on feature maps of the sides {self.train_cfg['grounding_sides']}")

    def grounding_loss(self, attention: List[tuple], batch: dict, keep: torch.Tensor) -> torch.Tensor:
        """The mean :func:`~.grounding.token_grounding_loss` of the words
        ``batch['grounding_tokens']`` ((B, S, W) text positions, -1 for none)
        on their objects' coverage ``batch['grounding_masks']`` (B, S, R, R),
        or on a region per word (B, S, W, R, R) (e.g. from
        ``ShapesDataset(grounding=True)``: the colour and kind word of each
        shape and its coverage; with ``grounding_kind_region='box'`` the kind
        word on the shape's bounding box), over the rows ``keep`` (B,) bool (the
        prompts not dropped, at timesteps up to
        ``train_cfg.grounding_max_timestep`` if that is set), the words and
        the ``attention`` recorded by
        :func:`~.grounding.recorded_text_attention` (every text attention
        block alike, on feature maps of the sides ``train_cfg.grounding_sides``;
        None: all). Not in GLIDE: see the ``grounding`` module for why.
        """
        self._check_grounding_batch(batch, attention, 'grounding_weight')
        positions = batch['grounding_tokens'].to(self.device)
        masks = batch['grounding_masks'].to(self.device)
        return self._mean_over_blocks(attention, keep,
                                      lambda weights: token_grounding_loss(weights, positions, masks))

    def train_noise(self, x0: torch.Tensor) -> torch.Tensor:
        """The training noise for images ``x0`` (B, C, H, W): white noise,
        plus ``train_cfg.offset_noise`` times one standard normal draw per
        image and channel, constant over the pixels ("offset noise",
        Guttenberg 2023), plus ``train_cfg.coarse_noise`` times a standard
        normal (B, C, g, g) grid (g = ``train_cfg.coarse_noise_grid``)
        upsampled bilinearly to H x W (one level of the "pyramid noise" of
        Whitaker 2023).

        Why: with white noise the mean of ``x_t`` over H*W pixels carries the
        mean of ``x0`` with only 1/sqrt(H*W) of noise, so a model can read an
        image's overall colour from ``x_t`` at every timestep but the last
        ~1% and has no reason to take it from the text; sampling starts from
        a colour-neutral ``x_T`` and keeps whatever colour the first steps
        guess. The offset hides that mean at high noise, so only the prompt
        can supply it. The coarse grid does the same for the layout: a
        shape-sized blob in ``x_t`` is no evidence of a shape at high noise,
        so where things go has to come from the prompt rather than from
        chance blobs of the starting noise. Sampling is unchanged (white
        ``x_T``).
        """
        noise = torch.randn_like(x0)
        offset = self.train_cfg['offset_noise']
        if offset > 0:
            noise = noise + offset * torch.randn(*x0.shape[:2], 1, 1, device=x0.device,
                                                 dtype=x0.dtype)
        coarse = self.train_cfg['coarse_noise']
        if coarse > 0:
            grid = self.train_cfg['coarse_noise_grid']
            low = torch.randn(*x0.shape[:2], grid, grid, device=x0.device, dtype=x0.dtype)
            noise = noise + coarse * F.interpolate(low, size=x0.shape[-2:], mode='bilinear',
                                                   align_corners=False)
        return noise

    def pixel_weights(self, x0: torch.Tensor,
                      kind_mask: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """(B, 1, H, W) per-pixel weights of the eps MSE for images ``x0``
        (B, C, H, W) in [-1, 1]: None (every pixel alike, GLIDE) unless
        ``train_cfg.foreground_weight`` = w > 0 or ``train_cfg.kind_weight``
        = k > 0, then ``1 + w * foreground + k * kind_mask``.

        ``kind_mask`` (B, 1, H, W) in [0, 1] (needed when k > 0; the batch
        key of that name, e.g. from ``ShapesDataset(kind_mask=True)``) marks
        the pixels whose colour depends on which kind of shape is drawn
        (``render_kind_mask``). With the foreground weight alone, a square
        drawn for a circle is wrong only on background pixels of weight 1,
        and the model learned to draw the named kinds but not which shape
        gets which; 2,400 iterations with k = 5 did not teach that either
        (docs/default_model.md, "Why the class lags").

        The background is the per-channel median of the image's border
        pixels; a pixel is foreground where any channel differs from it by
        more than 0.1 (about 13 levels of 255). Meant for flat-background
        data like the shapes world, whose objects cover 2-30% of the image:
        unweighted, a wrong shape colour costs so little beside the
        background that the loss barely asks the text for it.
        """
        weight, kind_weight = self.train_cfg['foreground_weight'], self.train_cfg['kind_weight']
        if not weight and not kind_weight:
            return None
        weights = torch.ones_like(x0[:, :1])
        if kind_weight:
            if kind_mask is None:
                raise ValueError("train_cfg.kind_weight > 0 needs a 'kind_mask' (B, 1, H, W) in the "
                                 'batch, e.g. from ShapesDataset(kind_mask=True)')
            if kind_mask.shape != weights.shape:
                raise ValueError(f'kind_mask must be {tuple(weights.shape)} (B, 1, H, W) like the '
                                 f'images, got {tuple(kind_mask.shape)}')
            weights = weights + kind_weight * kind_mask.to(weights)
        if not weight:
            return weights
        border = torch.cat([x0[..., 0, :], x0[..., -1, :], x0[..., 1:-1, 0], x0[..., 1:-1, -1]],
                           dim=-1)
        background = border.median(dim=-1).values[..., None, None]  # (B, C, 1, 1)
        foreground = ((x0 - background).abs() > 0.1).any(dim=1, keepdim=True)
        return weights + weight * foreground.to(x0.dtype)

    def mse_weights(self, inverse_snr: torch.Tensor) -> torch.Tensor:
        """(B,) weights of the eps MSE for rows with ``1 / SNR(t)`` given
        (``GaussianDiffusion.inverse_snr``): all ones (GLIDE) unless
        ``train_cfg.max_mse_weight`` is set, then
        ``min(max(1, 1 / SNR), max_mse_weight)``.

        Since ``|eps - eps_hat|^2 = SNR * |x0 - x0_hat|^2``, the plain eps MSE
        hardly penalises a wrong x0 where the SNR is small, which is exactly
        where the text must decide colours and layout. ``max(1, 1/SNR)`` is
        the "truncated SNR" weighting of Salimans & Ho 2022 (Progressive
        Distillation): x0 MSE where SNR < 1, eps MSE elsewhere; the cap keeps
        the last few timesteps (SNR down to 1e-9 on the cosine schedule)
        from dominating.
        """
        cap = self.train_cfg['max_mse_weight']
        if cap is None:
            return torch.ones_like(inverse_snr)
        return inverse_snr.clamp(min=1, max=float(cap))

    def sample_train_timesteps(self, batch_size: int, num_timesteps: int) -> torch.Tensor:
        """(B,) training timesteps: uniform on [0, T) (GLIDE), except that with
        probability ``train_cfg.high_noise_prob`` a row is drawn uniformly
        from [``high_noise_from``, T) instead.

        Why: on images whose content is mostly low-frequency (flat colours,
        like the shapes world), ``x_t`` itself reveals the colours and the
        layout at all but the noisiest timesteps (the mean of 4096 pixels
        averages the noise away), so only the last few percent of the cosine
        schedule need the text and uniform timesteps give the text pathway
        little to learn from. Drawing more high-noise timesteps reweights
        the denoising objective towards the steps that decide the
        composition (the noise-schedule observations of Hoogeboom et al.
        2023, "simple diffusion", and Chen 2023, "On the importance of noise
        scheduling for diffusion models"). Sampling is unchanged.
        """
        t = torch.randint(0, num_timesteps, (batch_size,), device=self.device)
        prob, start = self.train_cfg['high_noise_prob'], self.train_cfg['high_noise_from']
        if prob > 0:
            high = torch.randint(start, num_timesteps, (batch_size,), device=self.device)
            t = torch.where(torch.rand(batch_size, device=self.device) < prob, high, t)
        return t

    def predict(self, batch: dict) -> List[dict]:
        """Sample one image per prompt with per-item seeds.

        Each item's start noise comes from its own seed (``seed``, else
        ``index``, else its row), so results do not depend on batching or on
        how a prompt set is split across processes. Sampling options come
        from ``test_cfg``; with ``test_cfg.upsample_given_low_res=True`` the
        base stage is skipped and the upsampler upsamples the batch's
        ``low_res`` images (to score the upsampler alone against references).

        Returns:
            list[dict]: per item ``prompt``, ``seed``, ``image`` (3, H, W)
            uint8 RGB on the CPU, ``low_res_image`` (3, 64, 64) uint8 when the
            model upsamples, and every other batch entry passed through.
        """
        prompts = list(batch['prompt'])
        b = len(prompts)
        seeds = [int(s) for s in batch.get('seed', batch.get('index', range(b)))]
        cfg = dict(self.test_cfg)
        given_low_res = cfg.pop('upsample_given_low_res', False)

        def noise(size, offset, scale=1.):
            return torch.stack([
                torch.randn(3, size, size, generator=torch.Generator().manual_seed(s + offset))
                for s in seeds]).to(self.device) * scale

        if self.unet_up is not None:
            cfg['init_image_up'] = noise(self.unet_up.image_size, 1, cfg.get('upsample_temp', 0.997))
        if given_low_res:
            if self.unet_up is None or 'low_res' not in batch:
                raise ValueError('test_cfg.upsample_given_low_res needs a model with an upsampler '
                                 'and a test set that provides low_res images')
            low_res = batch['low_res'].to(self.device, torch.float32)
            result = self.infer_up(low_res, b, cfg['init_image_up'], prompts,
                                   cfg.get('num_inference_steps_up', 'fast27'),
                                   cfg.get('show_progress', False))
            result['low_res'] = quantize_8bit(low_res)
        else:
            result = self.infer(init_image=noise(self.unet.image_size, 0), prompt=prompts,
                                batch_size=b, **cfg)
        images = to_uint8(result['samples'])
        low = to_uint8(result['low_res']) if 'low_res' in result else None
        items = []
        for i in range(b):
            item = {k: v[i] for k, v in batch.items() if isinstance(v, (list, tuple, torch.Tensor))
                    and len(v) == b}
            item.update(prompt=prompts[i], seed=seeds[i], image=images[i])
            if low is not None:
                item['low_res_image'] = low[i]
            items.append(item)
        return items

