"""Convert openai's GLIDE checkpoints to this project's (mmagic) layout.

openai/glide-text2im released ``base.pt``, ``upsample.pt``, ``base-inpaint.pt``
and ``upsample-inpaint.pt`` as plain state dicts in its own key layout
(``input_blocks.N.M.in_layers.2.weight``...). The OpenMMLab checkpoints use
mmagic's layout (``unet.in_blocks.N.M.conv_1.2.weight``...). The two differ by
names only; this module renames, and infers the architecture from tensor
shapes so fine-tuned or resized GLIDEs convert too.

openai's noise-aware CLIP for CLIP guidance (``clip/image-enc``,
``clip/text-enc``) converts the same way, under the prefix ``clip.``:
``{image,text}_encoder.`` then

==================================  =====================================
openai key                          mmagic key
==================================  =====================================
``blocks.input.w_voc`` (text)       ``token_embedding.weight``
``blocks.input.w_pos``              ``position_embedding``
``blocks.input.patch_proj`` (image) ``patch_embedding.weight``
``blocks.input.w_t`` (image)        ``time_embedding.weight``
``blocks.input.ln.{g,b}`` (image)   ``input_norm.{weight,bias}``
``blocks.block_N.f_attn.ln``        ``blocks.N.attn.norm``
``blocks.block_N.f_attn.f_{q,k,v}`` ``blocks.N.attn.{q,k,v}_proj``
``blocks.block_N.f_attn.f_c``       ``blocks.N.attn.out_proj``
``blocks.block_N.f_mlp.ln``         ``blocks.N.mlp.norm``
``blocks.block_N.f_mlp.f_{1,2}``    ``blocks.N.mlp.fc{1,2}``
``blocks.output.ln``                ``final_norm``
``blocks.output.f``                 ``proj``
==================================  =====================================

with ``.g``/``.w`` -> ``.weight`` and ``.b`` -> ``.bias``.
"""
import math
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

# (openai pattern, mmagic replacement) for the CLIP towers, applied in order
_CLIP_RENAMES = [
    (r'^blocks\.input\.w_voc$', 'token_embedding.weight'),
    (r'^blocks\.input\.w_pos$', 'position_embedding'),
    (r'^blocks\.input\.patch_proj$', 'patch_embedding.weight'),
    (r'^blocks\.input\.w_t$', 'time_embedding.weight'),
    (r'^blocks\.input\.ln\.', 'input_norm.'),
    (r'^blocks\.block_(\d+)\.f_attn\.', r'blocks.\1.attn.'),
    (r'^blocks\.block_(\d+)\.f_mlp\.', r'blocks.\1.mlp.'),
    (r'^blocks\.output\.ln\.', 'final_norm.'),
    (r'^blocks\.output\.f\.', 'proj.'),
    (r'\.ln\.', '.norm.'),
    (r'\.f_([qkv])\.', r'.\1_proj.'),
    (r'\.f_c\.', '.out_proj.'),
    (r'\.f_([12])\.', r'.fc\1.'),
    (r'\.[gw]$', '.weight'),
    (r'\.b$', '.bias'),
]

#: openai's ``clip/config.yaml`` values that the released CLIP files do not
#: carry: the head counts and the logit scale (the plain factor)
OPENAI_CLIP_CONFIG = dict(logit_scale=100.0, n_head_text=8, n_head_image=12)

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


def check_openai_unet(obj, what: str) -> Dict[str, torch.Tensor]:
    """The state dict of a loaded openai UNet file (see :func:`unwrap_state_dict`);
    ``what`` names the file in the error when it is something else.

    Raises:
        ValueError: not a dict of tensors, or no ``input_blocks.0.0.weight``
            (another model, or a file already in this project's layout).
    """
    try:
        sd = unwrap_state_dict(obj)
    except ValueError as err:
        raise ValueError(f'{what} is {err}') from None
    if 'input_blocks.0.0.weight' not in sd:
        hint = ('it holds unet.* keys: it is already converted (load it with init_model)'
                if any(k.startswith(('unet.', 'unet_up.')) for k in sd) else
                'input_blocks.0.0.weight is missing')
        raise ValueError(f'{what} is not an openai GLIDE checkpoint: {hint}')
    return sd


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


def openai_clip_key_to_mmagic(key: str) -> str:
    """Rename one key of an openai CLIP tower to the mmagic layout (no prefix)."""
    for pattern, repl in _CLIP_RENAMES:
        key = re.sub(pattern, repl, key)
    return key


#: keys each CLIP tower's architecture is read from; the first tells the towers apart
_CLIP_TOWER_KEYS = dict(
    image_encoder=('blocks.input.patch_proj', 'blocks.input.w_t', 'blocks.input.w_pos', 'blocks.output.f.w'),
    text_encoder=('blocks.input.w_voc', 'blocks.input.w_pos', 'blocks.output.f.w'),
)


def _clip_tower(clip: dict, name: str) -> Dict[str, torch.Tensor]:
    """The state dict of one CLIP tower (``image_encoder`` / ``text_encoder``), checked to be that tower."""
    if name not in clip:
        raise ValueError(f"the CLIP checkpoint lacks '{name}': expected a dict with 'image_encoder', "
                         "'text_encoder' and optionally 'config' (openai's two released files go "
                         'to --clip-image and --clip-text)')
    sd = unwrap_state_dict(clip[name])
    missing = [k for k in _CLIP_TOWER_KEYS[name] if k not in sd]
    if missing:
        other = next(v[0] for k, v in _CLIP_TOWER_KEYS.items() if k != name)
        looks = f' (it holds {other}: were the two files swapped?)' if other in sd else ''
        raise ValueError(f'{name} is not an openai CLIP {name.split("_")[0]} encoder: '
                         f'{", ".join(missing)} missing{looks}')
    return sd


def _clip_heads(config: dict, key: str, width: int) -> int:
    """Head count ``config[key]`` (else the released model's) checked against ``width``."""
    heads = config.get(key, OPENAI_CLIP_CONFIG[key])
    state = config.get(key.replace('n_head_', 'n_head_state_'))
    if width % heads or (state is not None and heads * state != width):
        raise ValueError(f'CLIP width {width} does not split into {key}={heads} heads'
                         + (f' of {state}' if state is not None else
                            " (the released model's; pass the CLIP's config)"))
    return heads


def infer_clip_config(image_sd: Dict[str, torch.Tensor], text_sd: Dict[str, torch.Tensor],
                      config: Optional[dict] = None) -> dict:
    """The :class:`NoisedCLIP` config of openai-layout CLIP towers.

    Widths, depths, vocabulary, text context, patch and image size and the
    number of timesteps come from the tensors; head counts and the logit
    scale from ``config`` (openai's ``clip/config.yaml`` keys) when given,
    else the released model's (:data:`OPENAI_CLIP_CONFIG`).
    """
    config = config or {}
    embed_dim = text_sd['blocks.output.f.w'].shape[0]
    if image_sd['blocks.output.f.w'].shape[0] != embed_dim:
        raise ValueError(f'the CLIP towers embed to different widths: text {embed_dim}, image '
                         f"{image_sd['blocks.output.f.w'].shape[0]}")
    text_width, vocab_size = text_sd['blocks.input.w_voc'].shape[1], text_sd['blocks.input.w_voc'].shape[0]
    image_width, _, patch_size, _ = image_sd['blocks.input.patch_proj'].shape
    patches = image_sd['blocks.input.w_pos'].shape[0] - 1
    side = math.isqrt(patches)
    if side * side != patches:
        raise ValueError(f'the CLIP image encoder has {patches} patch positions, not a square grid')
    return dict(
        type='NoisedCLIP',
        embed_dim=embed_dim,
        logit_scale=float(config.get('logit_scale', OPENAI_CLIP_CONFIG['logit_scale'])),
        text_encoder=dict(width=text_width, heads=_clip_heads(config, 'n_head_text', text_width),
                          layers=_count(text_sd, r'blocks\.block_(\d+)\.'), vocab_size=vocab_size,
                          text_ctx=text_sd['blocks.input.w_pos'].shape[0]),
        image_encoder=dict(width=image_width, heads=_clip_heads(config, 'n_head_image', image_width),
                           layers=_count(image_sd, r'blocks\.block_(\d+)\.'), image_size=side * patch_size,
                           patch_size=patch_size, num_timesteps=image_sd['blocks.input.w_t'].shape[0]),
    )


def convert_openai_clip(clip: dict) -> Tuple[Dict[str, torch.Tensor], dict]:
    """Convert openai's noise-aware CLIP to mmagic keys under ``clip.`` and its config.

    Args:
        clip (dict): ``image_encoder`` and ``text_encoder`` (openai-layout
            state dicts, fp16 or fp32) and optionally ``config`` (openai's
            ``clip/config.yaml`` keys).

    Returns:
        tuple: (float32 state dict with ``clip.`` keys, the :class:`NoisedCLIP`
        config dict).
    """
    if not isinstance(clip, dict):
        raise ValueError(f'the CLIP checkpoint must be a dict, got {type(clip).__name__}')
    image_sd, text_sd = _clip_tower(clip, 'image_encoder'), _clip_tower(clip, 'text_encoder')
    clip_cfg = infer_clip_config(image_sd, text_sd, clip.get('config'))
    state_dict = {f'clip.{tower}.{openai_clip_key_to_mmagic(k)}': v.float() if v.is_floating_point() else v
                  for tower, sd in (('image_encoder', image_sd), ('text_encoder', text_sd))
                  for k, v in sd.items()}
    return state_dict, clip_cfg


def convert_openai_checkpoint(base, upsample=None, clip=None) -> Tuple[Dict[str, torch.Tensor], dict]:
    """Convert loaded openai files into one mmagic state dict and a model config.

    Args:
        base (dict): the loaded ``base.pt`` / ``base-inpaint.pt``: a plain state
            dict or ``{'options': ..., 'state_dict': ...}``.
        upsample (dict | None): the loaded ``upsample.pt`` /
            ``upsample-inpaint.pt``, same forms.
        clip (dict | None): the noise-aware CLIP for CLIP guidance, see
            :func:`convert_openai_clip`.

    Returns:
        tuple: (float32 state dict with ``unet.`` (and ``unet_up.``,
        ``clip.``) keys, the ``model`` config dict that builds the matching
        :class:`Glide`).
    """
    state_dict, model = {}, dict(type='Glide')
    stages = [('unet', 'diffusion_scheduler', base, 'squaredcos_cap_v2')]
    if upsample is not None:
        stages.append(('unet_up', 'diffusion_scheduler_up', upsample, 'linear'))
    for name, sched_name, obj, default_schedule in stages:
        options = obj.get('options') if isinstance(obj, dict) else None
        sd = check_openai_unet(obj, f'the {"upsample" if name == "unet_up" else "base"} file')
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
    if clip is not None:
        clip_state, model['clip'] = convert_openai_clip(clip)
        state_dict.update(clip_state)
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
