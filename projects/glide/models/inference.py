"""The sampling API of :class:`~.glide.Glide` (mixed into it): prompts in, images out.

Sampling reproduces openai/glide-text2im's notebooks: classifier-free
guidance with the unconditional branch conditioned on the empty prompt (or a
negative prompt), then the 64->256 upsampler conditioned on the real prompt
with the low-resolution sample quantised to 8 bits and the start noise
scaled by ``upsample_temp``. Inpainting replaces the known region of every
predicted x0 with the source image (the reference's ``denoised_fn``). The
stage loop and the input checks live in ``sampling.py``; composable prompts,
CLIP guidance and re-ranking in ``prompting.py``.
"""
from typing import Dict, List, Optional, Union

import torch

from ..images import quantize_8bit, to_uint8
from .prompting import (
    Composition,
    check_rerank,
    clip_cond_fn,
    clip_text_vectors,
    is_composed,
    per_candidate,
    plain_text,
)
from .prompting import rerank as rerank_candidates
from .sampling import (
    SAMPLING_DEFAULTS,
    Prompt,
    StageRequest,
    build_sampler,
    check_batch_size,
    check_clip_guidance,
    check_infer_args,
    check_infer_up_args,
    check_prompts,
    check_strength,
    check_text_emb,
    check_upsample_strength,
    img2img_image,
    inpaint_condition,
    low_res_start,
    make_generator,
    sample_stage,
    start_noise,
)


class GlideInference:
    """``encode_prompt``, ``infer``, ``infer_up`` and ``predict`` of :class:`Glide`.

    A mixin: it reads the model's ``unet``, ``unet_up``, samplers,
    ``tokenizer``, ``clip``, ``test_cfg``, ``device``, memory format and rows per call.
    """

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
              strength: Optional[float] = None,
              rerank: Optional[int] = None,
              upsample_strength: Optional[float] = SAMPLING_DEFAULTS['upsample_strength']) -> Dict[str, torch.Tensor]:
        """Text to image: the base stage, then the upsampler if the model has one.

        Args:
            init_image (Tensor | None): start noise x_T (B, 3, 64, 64), used
                verbatim; (2B, ...) is accepted too (first half used).
            prompt (str | list[str]): one prompt repeated ``batch_size`` times,
                or B prompts. A prompt may be composed (Liu et al. 2022):
                parts joined by `` AND `` / `` NOT `` (upper case), e.g.
                ``'a red circle at the top AND a blue square at the bottom'``;
                each part adds ``+-guidance_scale * (eps(part) - eps(uncond))``
                (``prompting.py``); the upsampler reads the AND parts joined by
                ' and '.
            batch_size (int): number of images B.
            guidance_scale (float): classifier-free guidance scale (1 = off).
            num_inference_steps (int | str): base steps: an int N is N evenly
                strided timesteps; a str is a respacing spec ('100', 'ddim50',
                'fast27', '10,10,3,2,2').
            num_inference_steps_up (int | str): upsampler steps.
            labels: kept for mmagic compatibility; must be None (GLIDE has
                no class-conditional guidance: CLIP guidance reads the prompts).
            classifier_scale (float): CLIP guidance scale S >= 0 (mmagic's
                name; 0 = off). S > 0 needs a noise-aware CLIP (``model.clip``)
                and adds ``S * d/dx_t [logit_scale * z_text . z_image(x_t, t)]``
                (t the original timestep) to the ancestral mean times its
                variance (``'ddpm'``) or to the score (``'ddim'``;
                ``'dpmsolver++'`` raises): GLIDE's CLIP guidance (sec. 3.2),
                base stage only, prompt b guiding row b, composing with
                ``guidance_scale`` (1: CLIP alone; openai's clip_guided notebook: S = 3, 'ddpm', 100 steps).
                Each step costs one float32 CLIP forward and backward.
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
                (DPM-Solver++(2M)), ``'dpmsolver++-sde'`` (its SDE form) or a
                scheduler config dict; same noise schedule.
            text_emb (dict | None): the base stage's text states from
                :meth:`encode_prompt` instead of ``prompt`` and ``negative_prompt``
                (2B rows with guidance, B or 2B without); an upsampler still reads ``prompt``.
            image (Tensor | None): img2img (SDEdit): (1|B, 3, H, W) in [-1, 1]
                to start from (any H=W; resized per stage), with ``strength``.
            strength (float | None): in (0, 1]: each stage starts from ``image``
                noised (with the start noise) to its largest kept timestep <=
                strength * 1000; small values stay close to ``image``, 1 starts
                at the top kept timestep (nearly pure noise).
            rerank (int | None): N > 1 draws N candidates per prompt in the
                base stage and keeps the one the CLIP at t = 0 scores highest
                against its prompt (DALL-E's re-ranking, which GLIDE is
                compared with); needs ``model.clip``; costs N base samples per
                image (the upsampler runs once). ``init_image`` is then
                (B * N, 3, 64, 64), prompt b's candidates in rows b * N ...
            upsample_strength (float | None): None (GLIDE's recipe) starts
                the upsampler from its drawn noise; a value in (0, 1] starts
                it from the base sample upsampled bicubically, noised (with
                that noise) to its largest kept timestep <= strength * 1000,
                so only the steps below run (see :meth:`infer_up`). Not with
                ``image``.

        Returns:
            dict: ``samples`` (B, 3, H, W) clamped to [-1, 1] (256 with an upsampler,
            else 64); with an upsampler also ``low_res`` (B, 3, 64, 64); with
            ``rerank`` also ``rerank_scores`` (B, N), the CLIP's logits.
        """
        classifier_scale = check_clip_guidance(labels, classifier_scale)
        num = check_rerank(rerank)
        if (classifier_scale > 0 or num > 1) and self.clip is None:
            raise ValueError(f'{"classifier_scale > 0" if classifier_scale > 0 else "rerank > 1"} needs a '
                             'noise-aware CLIP: this model has none (add model.clip to the config, e.g. the '
                             'one tools/model_converters/glide_openai_to_mmagic.py --clip writes)')
        check_batch_size(batch_size)  # all arguments of both stages are checked before the base stage
        if isinstance(prompt, (list, tuple)) and batch_size == 1:
            batch_size = len(prompt) or 1
        prompts = check_prompts(prompt, batch_size)
        negative = check_prompts(negative_prompt, batch_size, 'negative_prompt')
        generator = make_generator(seed, generator, self.device)
        if (inpaint_image is None) != (inpaint_mask is None):
            raise ValueError('inpaint_image and inpaint_mask must be given together')
        check_strength(image, strength)
        check_upsample_strength(upsample_strength, image)
        guidance = check_infer_args(self, batch_size, guidance_scale, num_inference_steps, init_image_up,
                                    upsample_temp, num_inference_steps_up)
        base_sampler = build_sampler(self.diffusion_scheduler, sampler)
        if classifier_scale > 0 and not base_sampler.supports_cond_fn:
            raise ValueError(f'CLIP guidance supports the \'ddim\' and \'ddpm\' samplers, not '
                             f'{type(base_sampler).__name__} (sampler={sampler!r}): pass sampler=\'ddim\' '
                             'or \'ddpm\', or classifier_scale=0')
        if text_emb is not None:
            if negative_prompt is not None or num > 1 or (prompt is not None and self.unet_up is None
                                                          and not classifier_scale):
                raise ValueError('text_emb replaces the encoding of prompt and negative_prompt: pass '
                                 'prompt only for the upsampler of a cascade or for CLIP guidance, '
                                 'no negative_prompt and no rerank')
            text_emb = check_text_emb(text_emb, batch_size, guidance is not None)

        # the base stage draws `num` candidates per prompt (rows b * num ...)
        size, rows = self.unet.image_size, batch_size * num
        x_t = start_noise(init_image, (rows, 3, size, size), generator, self.device)
        composition = None
        if text_emb is None and is_composed(prompts):
            composition, parts = Composition.from_prompts(per_candidate(prompts, batch_size, num),
                                                          float(guidance_scale), self.device)
            text_emb = self._encode(self.unet, parts, per_candidate(negative, batch_size, num))
        elif text_emb is None:
            text_emb = self._encode(self.unet, per_candidate(prompts, batch_size, num),
                                    per_candidate(negative, batch_size, num) if guidance is not None else None)
        clip_text = clip_text_vectors(self.clip, prompts) if classifier_scale > 0 or num > 1 else None
        cond, denoised_fn = inpaint_condition(self.unet, per_candidate(inpaint_image, batch_size, num),
                                              per_candidate(inpaint_mask, batch_size, num), rows, size,
                                              self.device)
        samples = sample_stage(StageRequest(
            unet=self.unet, scheduler=base_sampler, noise=x_t,
            text_emb=text_emb, steps=num_inference_steps, guidance_scale=guidance, generator=generator,
            cond=cond, denoised_fn=denoised_fn, composition=composition,
            cond_fn=(clip_cond_fn(self.clip, clip_text.repeat_interleave(num, 0), classifier_scale)
                     if classifier_scale > 0 else None),
            image=img2img_image(per_candidate(image, batch_size, num), rows, size, self.device),
            strength=strength, show_progress=show_progress, desc='GLIDE base'), self._torch_memory_format,
            self.stage_rows_per_call(self.unet))
        result = {}
        if num > 1:
            samples, result['rerank_scores'] = rerank_candidates(self.clip, samples, clip_text, num)
        if self.unet_up is None:
            return dict(samples=samples, **result)
        up = self.infer_up(samples, batch_size, init_image_up, [plain_text(p) for p in prompts],
                           num_inference_steps_up, show_progress, upsample_temp=upsample_temp,
                           generator=generator, inpaint_image=inpaint_image, inpaint_mask=inpaint_mask,
                           image=image, strength=strength, upsample_strength=upsample_strength)
        return dict(samples=up['samples'], low_res=samples, **result)

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
                 strength: Optional[float] = None,
                 upsample_strength: Optional[float] = None) -> Dict[str, torch.Tensor]:
        """Upsample any (B, 3, 64, 64) batch in [-1, 1] to 256x256.

        The low-resolution input is quantised to 8 bits, the drawn start noise
        is scaled by ``upsample_temp`` (``init_image`` is used verbatim), and
        the UNet is conditioned on ``prompt`` (or ``text_emb``, B rows from
        ``encode_prompt(..., stage='upsampler')``) without guidance.
        ``inpaint_image``/``inpaint_mask`` and ``image``/``strength`` work as
        in :meth:`infer`. ``upsample_strength`` in (0, 1] starts from the
        quantised input upsampled bicubically, noised to the largest kept
        timestep <= strength * 1000 (an img2img start from the upsampler's own
        input): the steps above it, which only redraw what the input fixes,
        are skipped (the bundled cascade's ``'ddim10'`` from 0.4 and how it
        scores: docs/benchmarks.md).

        Returns:
            dict: ``samples`` (B, 3, 256, 256) clamped to [-1, 1].
        """
        if self.unet_up is None:
            raise RuntimeError('this model has no upsampler: use a 64-256 config')
        batch_size = check_infer_up_args(self, low_res_img, batch_size, init_image, upsample_temp,
                                         num_inference_steps)
        prompts = check_prompts(prompt, batch_size)
        generator = make_generator(seed, generator, self.device)
        check_strength(image, strength)
        check_upsample_strength(upsample_strength, image)
        size = self.unet_up.image_size
        x_t = start_noise(init_image, (batch_size, 3, size, size), generator, self.device, upsample_temp)
        low_res = quantize_8bit(low_res_img.to(self.device, torch.float32))
        text_emb = (self._encode(self.unet_up, prompts, None) if text_emb is None
                    else check_text_emb(text_emb, batch_size, guided=False))
        cond, denoised_fn = inpaint_condition(self.unet_up, inpaint_image, inpaint_mask, batch_size, size,
                                              self.device)
        cond['low_res'] = low_res
        if upsample_strength is not None:  # the start image: the input itself, else the img2img image (or none)
            image, strength = low_res_start(low_res, size), upsample_strength
        else:
            image = img2img_image(image, batch_size, size, self.device)
        samples = sample_stage(StageRequest(
            unet=self.unet_up, scheduler=self.diffusion_scheduler_up, noise=x_t, text_emb=text_emb,
            steps=num_inference_steps, generator=generator, cond=cond, denoised_fn=denoised_fn,
            image=image, strength=strength, show_progress=show_progress, desc='GLIDE upsampler'),
            self._torch_memory_format, self.stage_rows_per_call(self.unet_up))
        return dict(samples=samples)

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

        def noise(size, offset, scale=1., num=1):  # item i: rows i * num ..., the first as without rerank
            return torch.cat([
                torch.randn(num, 3, size, size, generator=torch.Generator().manual_seed(s + offset))
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
                                   cfg.get('show_progress', False),
                                   upsample_strength=cfg.get('upsample_strength'))
            result['low_res'] = quantize_8bit(low_res)
        else:
            result = self.infer(init_image=noise(self.unet.image_size, 0, num=cfg.get('rerank') or 1), prompt=prompts,
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
