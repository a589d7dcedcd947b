"""Text to image with GLIDE: prompts in, one captioned PNG grid out.

    python tools/glide_demo.py "PROMPT" ["PROMPT" ...] [--config C]
        [--checkpoint P] [--batch-size N] [--seed S] [--guidance-scale G]
        [--steps N] [--steps-up N] [--sampler NAME] [--out out.png] [--device cpu|cuda]
        [--clip-scale S] [--rerank N] [--upsample-strength S|none]
        [--image in.png --mask mask.png]

Defaults: the bundled tiny shapes cascade, 64x64 base then 64->256 upsampler
(projects/glide/configs/glide_tiny_shapes-64-256.py with
projects/glide/weights/glide_tiny_shapes-64-256.pth), the prompt
'a red circle above a blue square on a yellow background', one image per
prompt, seed 0 (prompt i uses seed S + i), the config's test_cfg for
guidance and steps, cuda when available.

CLIP: ``--clip-scale S`` (CLIP guidance) and ``--rerank N`` (best of N base
samples by the CLIP) need a config with a noise-aware CLIP; with the default
config they switch to glide_tiny_shapes-64-256_clip-rerank.py (the same
weights plus the bundled CLIP), the flags alone setting the CLIP recipe. Prompts may be composed with AND / NOT
(``Glide.infer``).

Inpainting: ``--image in.png --mask mask.png`` (mask white = keep,
thresholded at 0.5; both resized to the model's base size) regenerates the
black part of the mask from the prompt; the output shows source, mask and
result side by side, one row per result.
"""
import argparse
import math
import os
import os.path as osp
import sys

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

DEFAULT_PROMPT = 'a red circle above a blue square on a yellow background'
DEFAULT_CONFIG = osp.join(REPO_ROOT, 'projects', 'glide', 'configs',
                          'glide_tiny_shapes-64-256.py')
DEFAULT_CLIP_CONFIG = osp.join(REPO_ROOT, 'projects', 'glide', 'configs',
                               'glide_tiny_shapes-64-256_clip-rerank.py')
DEFAULT_CHECKPOINT = osp.join(REPO_ROOT, 'projects', 'glide', 'weights',
                              'glide_tiny_shapes-64-256.pth')
#: infer's samplers (``sampling.SAMPLERS``), listed here so that --help imports no model code
SAMPLER_NAMES = ('ddim', 'ddpm', 'dpmsolver++', 'dpmsolver++-sde')


from projects.glide.engine.cli_checks import (  # noqa: E402
    UsageError,
    check_checkpoint,
    check_file,
    check_output_file,
    finite_float,
    nonnegative_float,
    positive_int,
    sampling_steps,
)


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'not an integer: {text!r}') from None
    if not 0 <= value < 2**62:
        raise argparse.ArgumentTypeError(f'seed must be in [0, 2**62), got {value}')
    return value


def _upsample_strength(text: str):
    """'none' (GLIDE's start from noise) or a float in (0, 1]."""
    if text.strip().lower() == 'none':
        return 'none'
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or 'none': {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1] or 'none', got {text}")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='GLIDE text to image: prompts in, a captioned PNG grid out')
    parser.add_argument('prompts', nargs='*', help=f'prompts (default: {DEFAULT_PROMPT!r})')
    parser.add_argument('--config', default=None,
                        help='model config (default: the tiny shapes 64->256 cascade)')
    parser.add_argument('--checkpoint', default=None,
                        help='weights (default: '
                        'projects/glide/weights/glide_tiny_shapes-64-256.pth)')
    parser.add_argument('--batch-size', type=positive_int, default=1,
                        help='images per prompt (default 1)')
    parser.add_argument('--seed', type=_seed, default=0,
                        help='seed of the first prompt; prompt i uses seed+i (default 0)')
    parser.add_argument('--guidance-scale', type=finite_float, default=None,
                        help="classifier-free guidance scale (default: the config's)")
    parser.add_argument('--steps', type=sampling_steps, default=None,
                        help="base sampling steps, e.g. 50 or ddim50 (default: the config's)")
    parser.add_argument('--steps-up', type=sampling_steps, default=None,
                        help="upsampler steps, e.g. fast27 (default: the config's)")
    parser.add_argument('--sampler', choices=SAMPLER_NAMES, default=None,
                        help="base stage sampler (default: the config's, else ddim)")
    parser.add_argument('--clip-scale', type=nonnegative_float, default=None,
                        help="CLIP guidance scale (0 = off; default: the config's); needs a CLIP")
    parser.add_argument('--upsample-strength', type=_upsample_strength, default=None,
                        help="start the upsampler from its bicubic-upsampled input noised to this strength in (0, 1], "
                        "or 'none' for GLIDE's start from pure noise (default: the config's)")
    parser.add_argument('--rerank', type=positive_int, default=None,
                        help="draw N base samples per image and keep the CLIP's favourite (default: the config's)")
    parser.add_argument('--out', default='glide_demo.png',
                        help='output PNG (default glide_demo.png); an existing file is replaced, atomically '
                        '(an interrupted run leaves it as it was)')
    parser.add_argument('--device', default=None,
                        help='cpu, cuda or cuda:N (default: cuda when available)')
    parser.add_argument('--image', help='inpainting: source image')
    parser.add_argument('--mask', help='inpainting: mask image (white = keep)')
    return parser.parse_args(argv)


def _check_out(path: str, inputs=()) -> str:
    path = osp.abspath(path)
    if not path.lower().endswith('.png'):
        raise UsageError(f'--out must be a .png file, got {path}')
    path = check_output_file(path, '--out', inputs)
    if osp.exists(path) and not os.access(path, os.W_OK):
        raise UsageError(f'cannot write --out {path}: the file is not writable')
    return path


def _open_image(path: str, what: str):
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError) as err:
        raise UsageError(f'{what} {path} is not a readable image ({err})') from None


def open_inpaint_inputs(image_path: str, mask_path: str):
    """Open the source image and the mask; they must be readable images of
    the same size."""
    img = _open_image(image_path, '--image')
    mask = _open_image(mask_path, '--mask')
    if img.size != mask.size:
        raise UsageError(f'--image is {img.size[0]}x{img.size[1]} but --mask is '
                         f'{mask.size[0]}x{mask.size[1]}: they must have the same size')
    return img, mask


def load_inpaint_inputs(image_path: str, mask_path: str, size: int):
    """Source (1, 3, size, size) in [-1, 1] and mask (1, 1, size, size) in
    {0, 1} (1 = keep), plus notes for the user."""
    import numpy as np
    import torch
    from PIL import Image
    notes = []
    img, mask = open_inpaint_inputs(image_path, mask_path)
    has_alpha = img.mode in ('RGBA', 'LA', 'PA') or (
        img.mode == 'P' and 'transparency' in img.info)
    if has_alpha:
        notes.append(f'note: dropping the alpha channel of {image_path} (the image is used as RGB)')
    if img.size[0] != img.size[1]:
        notes.append(f'note: {image_path} is {img.size[0]}x{img.size[1]}, not square; '
                     f'it is stretched to {size}x{size}')
    img = img.convert('RGB')
    if img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC)
    if mask.mode in ('RGBA', 'LA', 'PA'):
        mask = mask.convert('RGBA').convert('RGB')
    mask = mask.convert('L')
    if mask.size != (size, size):
        mask = mask.resize((size, size), Image.NEAREST)
    img_t = torch.from_numpy(np.asarray(img, np.float32).transpose(2, 0, 1).copy())
    img_t = (img_t / 127.5 - 1)[None]
    mask_t = (torch.from_numpy(np.asarray(mask, np.float32) / 255) > 0.5).float()[None, None]
    if mask_t.min() == 1:
        notes.append('note: the mask is all white (keep everything): nothing will be inpainted')
    if mask_t.max() == 0:
        notes.append('note: the mask is all black: the whole image is regenerated')
    return img_t, mask_t, notes


def sampling_options(model, args) -> dict:
    """``infer`` keyword arguments: the command line's options over the
    config's ``test_cfg`` (its ``infer`` arguments) over ``SAMPLING_DEFAULTS``."""
    import inspect

    from projects.glide.models.sampling import SAMPLING_DEFAULTS
    accepted = inspect.signature(model.infer).parameters
    test_cfg = {k: v for k, v in (getattr(model, 'test_cfg', None) or {}).items() if k in accepted}
    options = dict(guidance_scale=args.guidance_scale, num_inference_steps=args.steps,
                   num_inference_steps_up=args.steps_up, classifier_scale=args.clip_scale,
                   rerank=args.rerank, upsample_strength=args.upsample_strength, sampler=args.sampler)
    kwargs = {**SAMPLING_DEFAULTS, **test_cfg, **{k: v for k, v in options.items() if v is not None}}
    if kwargs['upsample_strength'] == 'none':
        kwargs['upsample_strength'] = None
    return dict(kwargs, show_progress=True)


def _default_device() -> str:
    import torch
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except UsageError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1


def run(args) -> int:
    from projects.glide.engine.devices import DeviceError, check_device
    prompts = [' '.join(p.split()) for p in args.prompts] or [DEFAULT_PROMPT]
    if any(not p for p in prompts):
        raise UsageError('empty prompt')
    wants_clip = bool(args.clip_scale) or (args.rerank or 1) > 1
    config = args.config or (DEFAULT_CLIP_CONFIG if wants_clip else DEFAULT_CONFIG)
    check_file(config, 'config file')
    if args.checkpoint is None:
        if not osp.isfile(DEFAULT_CHECKPOINT):
            raise UsageError(f'default weights {DEFAULT_CHECKPOINT} are missing (not trained or '
                             'downloaded yet): train them with tools/train.py '
                             f'{osp.relpath(DEFAULT_CONFIG, os.getcwd())} or pass --checkpoint')
        checkpoint = DEFAULT_CHECKPOINT
    else:
        checkpoint = check_file(args.checkpoint, 'checkpoint file')
    if (args.image is None) != (args.mask is None):
        raise UsageError('inpainting needs both --image and --mask')
    if args.image is not None:
        check_file(args.image, '--image')
        check_file(args.mask, '--mask')
        open_inpaint_inputs(args.image, args.mask)
    try:
        device = check_device(args.device) if args.device else _default_device()
    except DeviceError as err:
        raise UsageError(str(err)) from None
    out = _check_out(args.out, (args.image, args.mask))
    check_checkpoint(checkpoint)  # a text file, an image, a truncated file: named before any work

    import torch

    from projects.glide.apis import init_glide
    from projects.glide.checkpoint import CheckpointMismatchError
    from projects.glide.engine.grid import captioned_grid, save_png
    try:
        model = init_glide(config, checkpoint, device=device)
    except CheckpointMismatchError as err:
        details = str(err).split('\n', 1)[-1]
        raise UsageError(f'checkpoint {checkpoint} does not fit config {config}\n{details}') \
            from None
    except (FileNotFoundError, RuntimeError) as err:
        if 'checkpoint' not in str(err):
            raise
        raise UsageError(str(err)) from None

    if wants_clip and getattr(model, 'clip', None) is None:
        raise UsageError(f'--clip-scale / --rerank need a config with a noise-aware CLIP (model.clip); {config} has '
                         f'none (e.g. {osp.relpath(DEFAULT_CLIP_CONFIG, os.getcwd())})')
    kwargs = sampling_options(model, args)
    if args.config is None:  # the bundled configs: the CLIP flags alone set the CLIP recipe
        kwargs.update(classifier_scale=args.clip_scale or 0., rerank=args.rerank or 1)

    inpaint = None
    if args.image is not None:
        size = model.unet.image_size
        image, mask, notes = load_inpaint_inputs(args.image, args.mask, size)
        for note in notes:
            print(note, file=sys.stderr)
        inpaint = dict(inpaint_image=image, inpaint_mask=mask)

    n = args.batch_size
    images, captions = [], []
    for i, prompt in enumerate(prompts):
        seed = args.seed + i
        print(f'[{i + 1}/{len(prompts)}] {prompt!r} (seed {seed}, {n} image(s))',
              file=sys.stderr, flush=True)
        result = model.infer(prompt=[prompt] * n, batch_size=n, seed=seed,
                             **kwargs, **(inpaint or {}))
        for k, sample in enumerate(result['samples']):
            images.append(sample.float().cpu())
            captions.append(prompt if n == 1 else f'{prompt} [{k + 1}]')

    if inpaint is None:
        ncols = n if n > 1 else math.ceil(math.sqrt(len(images)))
        grid = captioned_grid(images, captions, ncols=ncols)
    else:
        side = images[0].shape[-1]
        source = torch.nn.functional.interpolate(
            inpaint['inpaint_image'], size=(side, side), mode='nearest')[0]
        mask = torch.nn.functional.interpolate(
            inpaint['inpaint_mask'], size=(side, side), mode='nearest')[0]
        mask = mask.expand(3, -1, -1) * 2 - 1
        tiles, caps = [], []
        for img, cap in zip(images, captions):
            tiles += [source, mask, img]
            caps += ['source', 'mask (white = keep)', cap]
        grid = captioned_grid(tiles, caps, ncols=3)
    existed = osp.exists(out)
    save_png(grid, out, dict(prompts='\n'.join(prompts), seed=str(args.seed)))
    replaced = ' (replaced the previous file)' if existed else ''
    print(f'wrote {out} ({grid.size[0]}x{grid.size[1]}, {len(images)} image(s)){replaced}')
    return 0


if __name__ == '__main__':
    status = main()
    # everything is written and closed: skip the interpreter's teardown of torch (about 0.5 s of a 6 s run)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
