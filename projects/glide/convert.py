"""Convert openai's GLIDE checkpoints to this project's (mmagic) layout.

openai/glide-text2im released ``base.pt``, ``upsample.pt``, ``base-inpaint.pt``
and ``upsample-inpaint.pt`` as plain state dicts in its own key layout
(``input_blocks.N.M.in_layers.2.weight``...). The OpenMMLab checkpoints use
mmagic's layout (``unet.in_blocks.N.M.conv_1.2.weight``...). The two differ by
names only; this module renames, and infers the architecture from tensor
shapes so fine-tuned or resized GLIDEs convert too.
"""
import re
from typing import Dict, Optional, Tuple

import torch

# (openai pattern, mmagic replacement), applied in order to each key
_RENAMES = [
    (r'^input_blocks\.', 'in_blocks.'),
    (r'^middle_block\.', 'mid_blocks.'),
    (r'^output_blocks\.', 'out_blocks.'),
    (r'^time_embed\.', 'time_embedding.blocks.'),
    (r'^out\.0\.', 'out.gn.'),
    (r'^out\.2\.', 'out.conv.'),
    (r'\.in_layers\.', '.conv_1.'),
    (r'\.emb_layers\.', '.norm_with_embedding.embedding_layer.'),
    (r'\.out_layers\.0\.', '.norm_with_embedding.norm.'),
    (r'\.out_layers\.3\.', '.conv_2.2.'),
    (r'\.skip_connection\.', '.shortcut.'),
]

#: UNet class for each (inpainting, super-resolution) combination
UNET_TYPES = {
    (False, False): 'Text2ImUNet',
    (False, True): 'SuperResText2ImUNet',
    (True, False): 'InpaintText2ImUNet',
    (True, True): 'SuperResInpaintText2ImUNet',
}


def openai_key_to_mmagic(key: str) -> str:
    """Rename one openai GLIDE key to the mmagic UNet layout (no prefix)."""
    for pattern, repl in _RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def unwrap_state_dict(obj) -> Dict[str, torch.Tensor]:
    """Return the tensor dict of a checkpoint: a plain state dict or a dict
    holding one under ``state_dict`` (openai files, fixtures, mmengine files)."""
    if isinstance(obj, dict) and isinstance(obj.get('state_dict'), dict):
        obj = obj['state_dict']
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise ValueError('not a GLIDE checkpoint: expected a dict of tensors or a dict with a '
                         "'state_dict' of tensors")
    return obj


def openai_to_mmagic(state_dict: Dict[str, torch.Tensor], prefix: str = 'unet.',
                     dtype: Optional[torch.dtype] = torch.float32) -> Dict[str, torch.Tensor]:
    """Rename an openai GLIDE UNet state dict to mmagic keys under ``prefix``.

    Args:
        state_dict (dict): openai keys -> tensors.
        prefix (str): ``'unet.'`` for the base/inpaint model, ``'unet_up.'`` for
            the upsampler.
        dtype (torch.dtype | None): cast floating tensors (openai ships fp16);
            None keeps them.
    """
    if 'input_blocks.0.0.weight' not in state_dict:
        raise ValueError('not an openai GLIDE UNet state dict: input_blocks.0.0.weight is missing '
                         '(is it already in mmagic layout?)')
    out = {}
    for key, value in state_dict.items():
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        out[prefix + openai_key_to_mmagic(key)] = value
    return out


def _count(state_dict, pattern) -> int:
    return len({m.group(1) for k in state_dict for m in [re.match(pattern, k)] if m})


def infer_unet_config(state_dict: Dict[str, torch.Tensor], options: Optional[dict] = None) -> dict:
    """Infer the UNet config of an openai-layout GLIDE state dict from shapes.

    Channels, multipliers, blocks per level, attention levels, text width,
    depth and context, input kind (base, upsampler, inpainting) come from the
    tensors. Attention head counts are not visible in weights: they come from
    ``options`` when the file carries openai's options, else GLIDE's defaults
    (64 channels per UNet head, ``xf_width // 64`` text heads).

    Args:
        state_dict (dict): openai keys -> tensors.
        options (dict | None): openai ``create_model_and_diffusion`` options.

    Returns:
        dict: a UNet config for ``MODELS.build``.
    """
    sd, opts = state_dict, options or {}
    base = sd['input_blocks.0.0.weight'].shape[0]
    in_total = sd['input_blocks.0.0.weight'].shape[1]
    n_out = _count(sd, r'output_blocks\.(\d+)\.')
    # the first output block that ends with an up-sampling resblock closes a level
    up_blocks = sorted(int(m.group(1)) for k in sd
                       for m in [re.match(r'output_blocks\.(\d+)\.[12]\.in_layers\.0\.weight', k)] if m)
    per_level = up_blocks[0] if up_blocks else n_out - 1
    levels = n_out // (per_level + 1)
    first = [1 + level * (per_level + 1) for level in range(levels)]
    mult = tuple(sd[f'input_blocks.{i + per_level - 1}.0.in_layers.2.weight'].shape[0] // base
                 for i in first)
    super_res, inpaint = in_total in (6, 10), in_total in (7, 10)
    image_size = opts.get('image_size', 256 if super_res else 64)
    xf_width = sd['token_embedding.weight'].shape[1]
    return dict(
        type=UNET_TYPES[(inpaint, super_res)],
        image_size=image_size,
        base_channels=base,
        in_channels=3,
        out_channels=sd['out.2.weight'].shape[0],
        resblocks_per_downsample=per_level,
        channel_mult=mult,
        attention_res=tuple(image_size // 2**level for level, i in enumerate(first)
                            if f'input_blocks.{i}.1.qkv.weight' in sd),
        num_head_channels=opts.get('num_head_channels', 64),
        num_heads=opts.get('num_heads', 1),
        text_ctx=sd['positional_embedding'].shape[0],
        xf_width=xf_width,
        xf_layers=_count(sd, r'transformer\.resblocks\.(\d+)\.'),
        xf_heads=opts.get('xf_heads', max(1, xf_width // 64)),
        xf_final_ln='final_ln.weight' in sd,
        xf_padding='padding_embedding' in sd,
        n_vocab=sd['token_embedding.weight'].shape[0],
    )


def convert_openai_checkpoint(base, upsample=None) -> Tuple[Dict[str, torch.Tensor], dict]:
    """Convert loaded openai files into one mmagic state dict and a model config.

    Args:
        base (dict): the loaded ``base.pt`` / ``base-inpaint.pt``: a plain state
            dict or ``{'options': ..., 'state_dict': ...}``.
        upsample (dict | None): the loaded ``upsample.pt`` /
            ``upsample-inpaint.pt``, same forms.

    Returns:
        tuple: (float32 state dict with ``unet.`` (and ``unet_up.``) keys, the
        ``model`` config dict that builds the matching :class:`Glide`).
    """
    state_dict, model = {}, dict(type='Glide')
    stages = [('unet', 'diffusion_scheduler', base, 'squaredcos_cap_v2')]
    if upsample is not None:
        stages.append(('unet_up', 'diffusion_scheduler_up', upsample, 'linear'))
    for name, sched_name, obj, default_schedule in stages:
        options = obj.get('options') if isinstance(obj, dict) else None
        sd = unwrap_state_dict(obj)
        unet_cfg = infer_unet_config(sd, options)
        is_up = unet_cfg['type'].startswith('SuperRes')
        if is_up != (name == 'unet_up'):
            raise ValueError(f'the {"upsample" if name == "unet_up" else "base"} file holds a '
                             f'{unet_cfg["type"]}: pass base models with --base and upsamplers '
                             'with --upsample')
        state_dict.update(openai_to_mmagic(sd, prefix=name + '.'))
        model[name] = unet_cfg
        model[sched_name] = dict(
            type='GlideDDIMScheduler', num_train_timesteps=(options or {}).get('diffusion_steps', 1000),
            beta_schedule=(options or {}).get('noise_schedule', default_schedule), eta=0.)
    model['test_cfg'] = dict(guidance_scale=3., num_inference_steps=100)
    if upsample is not None:
        model['test_cfg']['num_inference_steps_up'] = 'fast27'
    return state_dict, model


def config_text(model: dict) -> str:
    """A complete config file (str) that builds ``model``."""
    from mmengine.config import Config
    cfg = Config(dict(custom_imports=dict(imports=['projects.glide'], allow_failed_imports=False),
                      default_scope='mmagic', model=model))
    return '# Written by tools/model_converters/glide_openai_to_mmagic.py\n' + cfg.pretty_text
