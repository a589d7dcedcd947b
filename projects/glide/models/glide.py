"""The GLIDE cascade as an mmengine model: sampling, training and testing.

Sampling reproduces openai/glide-text2im's notebooks: classifier-free
guidance with the unconditional branch conditioned on the empty prompt (or a
negative prompt), then the 64->256 upsampler conditioned on the real prompt
with the low-resolution sample quantised to 8 bits and the start noise
scaled by ``upsample_temp``. Inpainting replaces the known region of every
predicted x0 with the source image (the reference's ``denoised_fn``). The
stage loop and the input checks live in ``sampling.py``, the training
components in ``training.py``.
"""
import contextlib
import warnings
from typing import Callable, Dict, List, Optional, Union

import torch
from mmagic.registry import DIFFUSION_SCHEDULERS, MODELS
from mmengine.model import BaseModel

from ..checkpoint import check_state_dict
from ..images import quantize_8bit, to_uint8
from .clip import NoisedCLIP
from .sampling import (
    SAMPLING_DEFAULTS,
    Prompt,
    StageRequest,
    build_sampler,
    check_clip_guidance,
    check_prompts,
    check_strength,
    check_text_emb,
    img2img_image,
    inpaint_condition,
    make_generator,
    sample_stage,
    start_noise,
)
from .tokenizer import GlideTokenizer
from .training import AuxLossInputs, build_module, parse_train_cfg, pixel_weight


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
        clip (dict | nn.Module | None): the noise-aware CLIP of CLIP guidance
            (``dict(type='NoisedCLIP', ...)``; the converter's ``--clip``
            writes it), used by ``infer(classifier_scale=S)``; its weights are
            the checkpoint's ``clip.`` keys. It always runs in float32 and
            contiguous, whatever ``dtype`` and ``memory_format`` say.
        dtype (str): ``'fp32'`` (default), ``'fp16'`` or ``'bf16'`` for both
            UNets and the text transformer (not the CLIP).
        use_fp16 (bool): mmagic spelling of ``dtype='fp16'``.
        memory_format (str): ``'contiguous'`` (default, NCHW) or
            ``'channels_last'`` (NHWC) for the UNets' convolution weights and
            the images fed to them while sampling (see
            :meth:`set_memory_format`).
        train_cfg (dict | None): ``stage`` ('base' or 'upsampler', which UNet
            ``train_step`` trains), ``caption_dropout`` (probability of
            training on the empty prompt, which classifier-free guidance
            needs; 0.2) and the components of the loss (``training.py``;
            each default is GLIDE's): ``timestep_sampler``
            (``UniformTimestepSampler``), ``noise`` (``TrainingNoise``, white),
            ``mse_weight`` (None, or ``TruncatedSNRWeight``), ``pixel_weights``
            (list of ``PixelWeight`` terms, e.g. ``ForegroundPixelWeight``) and
            ``aux_losses`` (list of ``AuxiliaryLoss``): config dicts, built
            into the attributes of those names (``noise``: ``train_noise``).
        test_cfg (dict | None): default keyword arguments of :meth:`infer` for
            ``val_step``/``test_step`` over ``SAMPLING_DEFAULTS``.
        data_preprocessor (dict | None): defaults to mmengine's
            ``BaseDataPreprocessor`` (moves the batch to the device).
    """

    def __init__(self,
                 unet: dict,
                 diffusion_scheduler: dict,
                 unet_up: Optional[dict] = None,
                 diffusion_scheduler_up: Optional[dict] = None,
                 tokenizer: dict = dict(type='GlideTokenizer'),
                 clip: Optional[dict] = None,
                 dtype: str = 'fp32',
                 use_fp16: bool = False,
                 memory_format: str = 'contiguous',
                 train_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None):
        super().__init__(data_preprocessor=data_preprocessor or dict(type='BaseDataPreprocessor'),
                         init_cfg=init_cfg)
        self.unet = build_module(MODELS, unet)
        self.diffusion_scheduler = build_module(DIFFUSION_SCHEDULERS, diffusion_scheduler)
        self.unet_up = build_module(MODELS, unet_up) if unet_up is not None else None
        if (unet_up is None) != (diffusion_scheduler_up is None):
            raise ValueError('unet_up and diffusion_scheduler_up must be given together')
        self.diffusion_scheduler_up = (build_module(DIFFUSION_SCHEDULERS, diffusion_scheduler_up)
                                       if diffusion_scheduler_up is not None else None)
        self.tokenizer = build_module(MODELS, tokenizer)
        if not isinstance(self.tokenizer, GlideTokenizer):
            raise TypeError(f'tokenizer must build a GlideTokenizer, got {type(self.tokenizer).__name__}')
        self.clip = build_module(MODELS, clip) if clip is not None else None
        if self.clip is not None and not isinstance(self.clip, NoisedCLIP):
            raise TypeError(f'clip must build a NoisedCLIP, got {type(self.clip).__name__}')
        if self.clip is not None:
            self.clip.requires_grad_(False)  # guidance differentiates w.r.t. x_t only
        parts = parse_train_cfg(train_cfg)
        self.train_cfg = dict(stage=parts['stage'], caption_dropout=parts['caption_dropout'])
        self.timestep_sampler, self.train_noise, self.mse_weight, self.pixel_weights, self.aux_losses = (
            parts[k] for k in ('timestep_sampler', 'noise', 'mse_weight', 'pixel_weights', 'aux_losses'))
        scheduler = self._stage(self.train_cfg['stage'], 'train_cfg.stage')[1]
        self.timestep_sampler.check(scheduler.train_diffusion.num_timesteps)
        self.test_cfg = dict(test_cfg or {})
        self.set_dtype('fp16' if use_fp16 else dtype)
        self.set_memory_format(memory_format)
        self._register_load_state_dict_pre_hook(self._check_checkpoint, with_module=False)

    # ------------------------------------------------------------ utilities
    def set_dtype(self, dtype: str) -> 'Glide':
        """Run both UNets and their text transformers in ``'fp32'``, ``'fp16'`` or
        ``'bf16'``; the CLIP stays float32 (as in the reference, its gradient is
        taken in float32)."""
        for unet in (self.unet, self.unet_up):
            if unet is not None:
                unet.set_dtype(dtype)
        if self.clip is not None:
            self.clip.float()
        return self

    def set_memory_format(self, memory_format: str) -> 'Glide':
        """Lay out the UNets' 4-D weights and sampled images as
        ``'contiguous'`` (NCHW) or ``'channels_last'`` (NHWC): cuDNN's and
        oneDNN's fastest half-precision convolutions work on NHWC; results
        agree with ``'contiguous'`` up to float rounding. The CLIP is left
        contiguous."""
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
        """``nn.Module.to``, except that a CUDA device on a machine without CUDA
        keeps the model on the CPU with a warning (``mmagic.apis.init_model``
        moves models to ``'cuda:0'`` by default); ``.cuda()`` still fails there."""
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

    def _stage(self, stage: str, name: str = 'stage'):
        """The (UNet, scheduler) of ``stage`` ('base' or 'upsampler'); errors name the argument ``name``."""
        if stage == 'base':
            return self.unet, self.diffusion_scheduler
        if stage == 'upsampler':
            if self.unet_up is None:
                raise ValueError(f"{name}='upsampler' but the model has no unet_up")
            return self.unet_up, self.diffusion_scheduler_up
        raise ValueError(f"{name} must be 'base' or 'upsampler', got {stage!r}")

    def _encode(self, unet, prompts: List[str], negative: Optional[List[str]]) -> Dict[str, torch.Tensor]:
        tokens, mask = self.tokenizer(prompts + (negative or []), device=self.device)
        return unet.encode_text(tokens, mask)

    def _clip_cond_fn(self, prompts: List[str], scale: float) -> Optional[Callable]:
        """CLIP guidance's ``cond_fn(x_t, t)`` for ``prompts`` (row b -> prompt b) at
        ``scale``, or None when ``scale`` is 0. The prompts are encoded once;
        each call builds and frees its own float32 graph through the image encoder."""
        if not scale:
            return None
        with torch.no_grad():
            text = self.clip.encode_text(*self.clip.tokenize(prompts))

        def cond_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.clip.guidance_grad(x, t, text, scale)

        return cond_fn

    # -------------------------------------------------------------- sampling
    def encode_prompt(self, prompt: Prompt, negative_prompt: Optional[Prompt] = None, batch_size: int = 1,
                      stage: str = 'base') -> Dict[str, torch.Tensor]:
        """The text states ``infer(text_emb=...)`` (``stage='base'``) or
        ``infer_up(text_emb=...)`` (``'upsampler'``) take, to encode a prompt
        once for many samples or to edit it: the UNet's ``encode_text``
        output (``xf_proj`` (R, C), ``xf_out`` (R, width, T)); for the base
        stage R = 2B rows, the B prompts then the B unconditional prompts
        (``negative_prompt``, default the empty prompt), for the (unguided)
        upsampler R = B."""
        unet = self._stage(stage)[0]
        if isinstance(prompt, (list, tuple)) and batch_size == 1:
            batch_size = len(prompt) or 1
        prompts = check_prompts(prompt, batch_size)
        negative = check_prompts(negative_prompt, batch_size, 'negative_prompt')
        if stage == 'upsampler' and negative_prompt is not None:
            raise ValueError('the upsampler is not guided: negative_prompt must be None for stage='
                             "'upsampler'")
        return self._encode(unet, prompts, negative if stage == 'base' else None)

    @torch.no_grad()
    def infer(self,
              init_image: Optional[torch.Tensor] = None,
              prompt: Optional[Prompt] = None,
              batch_size: int = 1,
              guidance_scale: float = SAMPLING_DEFAULTS['guidance_scale'],
              num_inference_steps: Union[int, str] = SAMPLING_DEFAULTS['num_inference_steps'],
              num_inference_steps_up: Union[int, str] = SAMPLING_DEFAULTS['num_inference_steps_up'],
              labels: Optional[torch.Tensor] = None,
              classifier_scale: float = 0.0,
              show_progress: bool = False,
              negative_prompt: Optional[Prompt] = None,
              seed: Optional[int] = None,
              generator: Optional[torch.Generator] = None,
              upsample_temp: float = SAMPLING_DEFAULTS['upsample_temp'],
              init_image_up: Optional[torch.Tensor] = None,
              inpaint_image: Optional[torch.Tensor] = None,
              inpaint_mask: Optional[torch.Tensor] = None,
              sampler: Union[None, str, dict] = None,
              text_emb: Optional[Dict[str, torch.Tensor]] = None,
              image: Optional[torch.Tensor] = None,
              strength: Optional[float] = None) -> Dict[str, torch.Tensor]:
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
            num_inference_steps_up (int | str): upsampler steps.
            labels: kept for mmagic compatibility; must be None (GLIDE has
                no class-conditional guidance: CLIP guidance reads the prompts).
            classifier_scale (float): CLIP guidance scale S, a finite float
                >= 0 (mmagic's name); 0 (default) = off, bit-identical to a
                model without a CLIP. S > 0 needs a noise-aware CLIP in the
                config (``model.clip``) and steers the base stage toward the
                prompts (prompt b guides row b): every step adds
                ``S * d/dx_t [100 * z_text . z_image(x_t, t)]`` (the CLIP seeing
                noisy x_t at the original timestep t) to the ancestral mean
                times its variance (``sampler='ddpm'``) or, for DDIM, to the
                score (times ``-sqrt(1 - alpha_bar)``), GLIDE's CLIP guidance
                (Nichol et al. 2021, sec. 3.2). The gradient is (B, 3, 64, 64)
                and scales with S; openai's notebook uses S = 1 with its CLIP,
                the reference fixture 3. It composes with ``guidance_scale``
                (``guidance_scale=1``: CLIP guidance alone, the notebook's
                recipe). The upsampler is not guided. Only the ``'ddim'`` and
                ``'ddpm'`` samplers support it (``'dpmsolver++'`` raises);
                each step costs one CLIP forward and backward in float32.
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
            text_emb (dict | None): the base stage's text states from
                :meth:`encode_prompt` instead of ``prompt`` and ``negative_prompt``
                (2B rows with guidance, B or 2B without); an upsampler still reads ``prompt``.
            image (Tensor | None): img2img (SDEdit): (1|B, 3, H, W) in [-1, 1]
                to start from (any H=W; resized per stage), with ``strength``.
            strength (float | None): in (0, 1]: each stage starts from ``image``
                noised (with the start noise) to its largest kept timestep <=
                strength * 1000; small values stay close to ``image``, 1 starts
                at the top kept timestep (nearly pure noise).

        Returns:
            dict: ``samples`` (B, 3, H, W) in [-1, 1] (256 with an upsampler,
            else 64); with an upsampler also ``low_res`` (B, 3, 64, 64).
        """
        classifier_scale = check_clip_guidance(labels, classifier_scale)
        if classifier_scale > 0 and self.clip is None:
            raise ValueError('classifier_scale > 0 turns on CLIP guidance, which needs a noise-aware CLIP: '
                             'this model has none (add model.clip to the config, e.g. the one '
                             'tools/model_converters/glide_openai_to_mmagic.py --clip writes)')
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f'batch_size must be a positive int, got {batch_size!r}')
        if isinstance(prompt, (list, tuple)) and batch_size == 1:
            batch_size = len(prompt) or 1
        prompts = check_prompts(prompt, batch_size)
        negative = check_prompts(negative_prompt, batch_size, 'negative_prompt')
        generator = make_generator(seed, generator, self.device)
        if (inpaint_image is None) != (inpaint_mask is None):
            raise ValueError('inpaint_image and inpaint_mask must be given together')
        check_strength(image, strength)
        guidance = None if guidance_scale == 1 else float(guidance_scale)
        base_sampler = build_sampler(self.diffusion_scheduler, sampler)
        if classifier_scale > 0 and not base_sampler.supports_cond_fn:
            raise ValueError(f'CLIP guidance supports the \'ddim\' and \'ddpm\' samplers, not '
                             f'{type(base_sampler).__name__} (sampler={sampler!r}): pass sampler=\'ddim\' '
                             'or \'ddpm\', or classifier_scale=0')
        if text_emb is not None:
            if negative_prompt is not None or (prompt is not None and self.unet_up is None
                                               and not classifier_scale):
                raise ValueError('text_emb replaces the encoding of prompt and negative_prompt: pass '
                                 'prompt only for the upsampler of a cascade or for CLIP guidance, '
                                 'and no negative_prompt')
            text_emb = check_text_emb(text_emb, batch_size, guidance is not None)

        size = self.unet.image_size
        x_t = start_noise(init_image, (batch_size, 3, size, size), generator, self.device)
        if text_emb is None:
            text_emb = self._encode(self.unet, prompts, negative if guidance is not None else None)
        cond, denoised_fn = inpaint_condition(self.unet, inpaint_image, inpaint_mask, batch_size, size,
                                              self.device)
        samples = sample_stage(StageRequest(
            unet=self.unet, scheduler=base_sampler, noise=x_t,
            text_emb=text_emb, steps=num_inference_steps, guidance_scale=guidance, generator=generator,
            cond=cond, denoised_fn=denoised_fn, cond_fn=self._clip_cond_fn(prompts, classifier_scale),
            image=img2img_image(image, batch_size, size, self.device),
            strength=strength, show_progress=show_progress, desc='GLIDE base'), self._torch_memory_format)
        if self.unet_up is None:
            return dict(samples=samples)
        up = self.infer_up(samples, batch_size, init_image_up, prompts, num_inference_steps_up,
                           show_progress, upsample_temp=upsample_temp, generator=generator,
                           inpaint_image=inpaint_image, inpaint_mask=inpaint_mask, image=image,
                           strength=strength)
        return dict(samples=up['samples'], low_res=samples)

    @torch.no_grad()
    def infer_up(self,
                 low_res_img: torch.Tensor,
                 batch_size: Optional[int] = None,
                 init_image: Optional[torch.Tensor] = None,
                 prompt: Optional[Prompt] = None,
                 num_inference_steps: Union[int, str] = SAMPLING_DEFAULTS['num_inference_steps_up'],
                 show_progress: bool = False,
                 upsample_temp: float = SAMPLING_DEFAULTS['upsample_temp'],
                 seed: Optional[int] = None,
                 generator: Optional[torch.Generator] = None,
                 inpaint_image: Optional[torch.Tensor] = None,
                 inpaint_mask: Optional[torch.Tensor] = None,
                 text_emb: Optional[Dict[str, torch.Tensor]] = None,
                 image: Optional[torch.Tensor] = None,
                 strength: Optional[float] = None) -> Dict[str, torch.Tensor]:
        """Upsample any (B, 3, 64, 64) batch in [-1, 1] to 256x256.

        The low-resolution input is quantised to 8 bits, the drawn start noise
        is scaled by ``upsample_temp`` (``init_image`` is used verbatim), and
        the UNet is conditioned on ``prompt`` (or ``text_emb``, B rows from
        ``encode_prompt(..., stage='upsampler')``) without guidance.
        ``inpaint_image``/``inpaint_mask`` and ``image``/``strength`` work as
        in :meth:`infer`.

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
        prompts = check_prompts(prompt, batch_size)
        generator = make_generator(seed, generator, self.device)
        check_strength(image, strength)
        size = self.unet_up.image_size
        x_t = start_noise(init_image, (batch_size, 3, size, size), generator, self.device, upsample_temp)
        low_res = quantize_8bit(low_res_img.to(self.device, torch.float32))
        text_emb = (self._encode(self.unet_up, prompts, None) if text_emb is None
                    else check_text_emb(text_emb, batch_size, guided=False))
        cond, denoised_fn = inpaint_condition(self.unet_up, inpaint_image, inpaint_mask, batch_size, size,
                                              self.device)
        cond['low_res'] = low_res
        samples = sample_stage(StageRequest(
            unet=self.unet_up, scheduler=self.diffusion_scheduler_up, noise=x_t, text_emb=text_emb,
            steps=num_inference_steps, generator=generator, cond=cond, denoised_fn=denoised_fn,
            image=img2img_image(image, batch_size, size, self.device), strength=strength,
            show_progress=show_progress, desc='GLIDE upsampler'), self._torch_memory_format)
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

    def loss(self, batch: dict) -> Dict[str, torch.Tensor]:
        """GLIDE's hybrid training loss (eps MSE + variational bound for the
        learned variance) of ``train_cfg.stage``'s UNet on the batch's ``img``
        (B, 3, H, W) in [-1, 1], each prompt dropped to '' with probability
        ``caption_dropout``; plus ``loss_<name>`` of each auxiliary loss."""
        unet, scheduler = self._stage(self.train_cfg['stage'], 'train_cfg.stage')
        diffusion = scheduler.train_diffusion
        x0 = batch['img'].to(self.device, torch.float32)
        b = x0.shape[0]
        drop = torch.rand(b) < self.train_cfg['caption_dropout']
        prompts = ['' if d else p for p, d in zip(batch['prompt'], drop.tolist())]
        tokens, mask = self.tokenizer(prompts, device=self.device)
        t = self.timestep_sampler(b, diffusion.num_timesteps, self.device)
        noise = self.train_noise(x0)
        x_t = diffusion.q_sample(x0, t, noise)
        cond = {}
        if unet is self.unet_up:
            cond['low_res'] = quantize_8bit(batch['low_res'].to(self.device, torch.float32))
        with contextlib.ExitStack() as stack:
            observed = [stack.enter_context(aux.watch(unet)) for aux in self.aux_losses]
            out = unet(x_t, t, tokens, mask, **cond)
        losses = diffusion.training_losses(out.float(), x0, x_t, t, noise,
                                           pixel_weights=pixel_weight(self.pixel_weights, x0, batch))
        mse = losses['mse']
        if self.mse_weight is not None:
            mse = mse * self.mse_weight(diffusion.inverse_snr(t, b).to(self.device))
        result = dict(loss_mse=mse.mean(), loss_vb=losses['vb'].mean())
        keep = ~drop.to(self.device)
        for aux, seen in zip(self.aux_losses, observed):
            result[f'loss_{aux.name}'] = aux.weight * aux(AuxLossInputs(batch, t, keep, mask, seen))
        return result

    def predict(self, batch: dict) -> List[dict]:
        """Sample one image per prompt with per-item seeds.

        Each item's start noise comes from its own seed (``seed``, else
        ``index``, else its row), so results do not depend on batching or on
        how a prompt set is split across processes. Sampling options come
        from ``test_cfg`` over ``SAMPLING_DEFAULTS``; with
        ``test_cfg.upsample_given_low_res=True`` the base stage is skipped
        and the upsampler upsamples the batch's ``low_res`` images (to score
        the upsampler alone against references).

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
            cfg['init_image_up'] = noise(self.unet_up.image_size, 1,
                                         cfg.get('upsample_temp', SAMPLING_DEFAULTS['upsample_temp']))
        if given_low_res:
            if self.unet_up is None or 'low_res' not in batch:
                raise ValueError('test_cfg.upsample_given_low_res needs a model with an upsampler '
                                 'and a test set that provides low_res images')
            low_res = batch['low_res'].to(self.device, torch.float32)
            result = self.infer_up(low_res, b, cfg['init_image_up'], prompts,
                                   cfg.get('num_inference_steps_up', SAMPLING_DEFAULTS['num_inference_steps_up']),
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
