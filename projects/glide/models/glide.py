"""The GLIDE cascade as an mmengine model: building, precision, training and testing.

The sampling API (``encode_prompt``, ``infer``, ``infer_up``, ``predict``)
is mixed in from ``inference.py``; the training components live in
``training.py``.
"""
import contextlib
import warnings
from typing import Dict, Optional, Union

import torch
from mmagic.registry import DIFFUSION_SCHEDULERS, MODELS
from mmengine.model import BaseModel

from ..checkpoint import check_state_dict
from ..images import quantize_8bit
from .clip import NoisedCLIP
from .inference import GlideInference
from .sampling import CPU_ROWS_BYTES
from .tokenizer import GlideTokenizer
from .training import AuxLossInputs, build_module, parse_train_cfg, pixel_weight


@MODELS.register_module(name=['Glide', 'GLIDE'])
class Glide(GlideInference, BaseModel):
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
        rows_per_call (int | str | None): the most batch rows one UNet call
            takes while sampling (see :meth:`set_rows_per_call`): ``'auto'``
            (default), an int, or None for all rows at once.
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
                 rows_per_call: Union[int, str, None] = 'auto',
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
        self.set_rows_per_call(rows_per_call)
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

    def compile(self, **options) -> 'Glide':
        """``torch.compile`` the UNets' forward with static shapes, one graph per stage (see
        ``models/compile.py``); ``options`` go to ``torch.compile``, e.g. ``mode='reduce-overhead'``."""
        from .compile import compile_unets
        return compile_unets(self, **options)

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

    def set_rows_per_call(self, rows_per_call: Union[int, str, None]) -> 'Glide':
        """Feed a sampling loop's UNet batches (2B rows when guided) in slices
        of at most ``rows_per_call`` rows. ``'auto'``: on a CPU, as many rows
        as keep the UNet's largest feature map within ``CPU_ROWS_BYTES`` (24
        MiB; the bundled base model: 16 rows, its upsampler: 1), because
        blocks over 32 MiB come as fresh pages from the kernel at every
        call; on other devices all rows at once. Rows are independent, so slicing
        changes results only by float rounding."""
        if not (rows_per_call is None or rows_per_call == 'auto' or
                (isinstance(rows_per_call, int) and not isinstance(rows_per_call, bool) and rows_per_call > 0)):
            raise ValueError(f"rows_per_call must be a positive int, 'auto' or None, got {rows_per_call!r}")
        self.rows_per_call = rows_per_call
        return self

    def stage_rows_per_call(self, unet) -> Optional[int]:
        """The rows per call ``unet`` gets now (None: all), ``rows_per_call`` resolved."""
        if self.rows_per_call != 'auto':
            return self.rows_per_call
        if self.device.type != 'cpu':
            return None
        row_bytes = unet.largest_feature_numel * torch.finfo(unet.dtype).bits // 8
        return max(1, CPU_ROWS_BYTES // row_bytes)

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
        """Refuse any checkpoint whose keys or shapes differ from this model's.
        A checkpoint without ``clip.`` keys keeps the weights of a CLIP that
        loaded its own (``pretrained``): they are added to it before loading."""
        if prefix:
            return
        expected = {k: v.shape for k, v in self.state_dict().items()}
        if self.clip is not None and self.clip.pretrained and not any(k.startswith('clip.') for k in state_dict):
            state_dict.update({f'clip.{k}': v for k, v in self.clip.state_dict().items()})
        check_state_dict(expected, state_dict)

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
