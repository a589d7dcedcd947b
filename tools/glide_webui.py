"""A web page for GLIDE: text to images and inpainting, served with Gradio.

    python tools/glide_webui.py [--config C --checkpoint P] [--host 127.0.0.1] [--port 7860] [--device D]

Defaults: the bundled tiny shapes cascade (64x64 base, then 64->256
upsampler), 127.0.0.1 (this machine only), port 7860, cuda when available.
The checks and the sampling live in small functions (``check_*``,
:class:`GlideRunner`), so they are used and tested without a browser; the
page only wires them to widgets. Requests are queued and served one at a
time: each carries its own seed, nothing of one request is kept for the next.
"""
import argparse
import os
import os.path as osp
import random
import re
import sys
import threading
from typing import Dict, List, Optional, Sequence, Tuple

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from projects.glide.engine.cli_checks import UsageError, check_file  # noqa: E402

DEFAULT_CONFIG = osp.join(REPO_ROOT, 'projects', 'glide', 'configs', 'glide_tiny_shapes-64-256.py')
DEFAULT_CHECKPOINT = osp.join(REPO_ROOT, 'projects', 'glide', 'weights', 'glide_tiny_shapes-64-256.pth')
EXAMPLE_PROMPT = 'a red circle above a blue square on a yellow background'
SAMPLER_NAMES = ('ddim', 'ddpm', 'dpmsolver++', 'dpmsolver++-sde')
MAX_STEPS = 1000     # the diffusion's training timesteps
MAX_IMAGES = 16      # prompts x batch per request
MAX_SEED = 2**31 - 1
MAX_GUIDANCE = 100.


class InputError(ValueError):
    """A request the page refuses; its message is shown in the page."""


# ------------------------------------------------------------------ checks
def check_prompts(text: Optional[str]) -> List[str]:
    """One prompt per non-empty line of ``text`` (whitespace collapsed)."""
    prompts = [' '.join(line.split()) for line in str(text or '').splitlines()]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise InputError('enter a prompt (one per line)')
    return prompts


def check_steps(value, name: str):
    """Sampling steps of one stage: an int in [1, MAX_STEPS] (given as a number
    or digits) or a respacing spec ('ddim50', 'fast27', '10,10,3')."""
    from projects.glide.models.diffusion import respaced_timesteps
    text = str(value).strip() if value is not None else ''
    if re.fullmatch(r'[+-]?\d+(\.0*)?', text):
        steps = int(float(text))
        if not 1 <= steps <= MAX_STEPS:
            raise InputError(f'{name} must be between 1 and {MAX_STEPS}, got {steps}')
        return steps
    try:
        respaced_timesteps(text, MAX_STEPS)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number of steps (1-{MAX_STEPS}) or a spec such as 'ddim50', "
                         f"'fast27' or '10,10,3', got {text!r}") from None
    return text


def check_number(value, name: str, low: float, high: float, integer: bool = False):
    """``value`` as an int (``integer``) or a float in [low, high]."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f'{name} must be a number, got {value!r}') from None
    if not low <= number <= high:  # also refuses nan
        raise InputError(f'{name} must be between {low:g} and {high:g}, got {value!r}')
    if integer:
        if number != int(number):
            raise InputError(f'{name} must be a whole number, got {value!r}')
        return int(number)
    return number


def check_sampler(name: Optional[str]) -> str:
    if name not in SAMPLER_NAMES:
        raise InputError(f'sampler must be one of {", ".join(SAMPLER_NAMES)}, got {name!r}')
    return name


def pick_seed(seed, randomize: bool) -> int:
    """The request's seed: a fresh random one when ``randomize``, else ``seed``
    checked to lie in [0, MAX_SEED]."""
    if randomize:
        return random.SystemRandom().randrange(MAX_SEED + 1)
    return check_number(seed, 'seed', 0, MAX_SEED, integer=True)


def open_image(value, what: str):
    """A PIL image from a PIL image, an (H, W, C) uint8 array or a file path;
    anything else, or a file that is not an image, is an InputError."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype != np.uint8 or value.ndim not in (2, 3):
            raise InputError(f'{what} must be an 8-bit image, got an array {value.dtype} {value.shape}')
        return Image.fromarray(value)
    if isinstance(value, str) and osp.isfile(value):
        try:
            with Image.open(value) as image:
                image.load()
                return image.copy()
        except (UnidentifiedImageError, OSError) as err:
            raise InputError(f'{what} is not a readable image ({osp.basename(value)}: {err})') from None
    raise InputError(f'{what} is missing: upload an image')


def editor_parts(editor) -> Tuple[object, list]:
    """(background, painted layers) of an image-editor value (a dict with
    'background' and 'layers', as the page sends it)."""
    if not isinstance(editor, dict) or editor.get('background') is None:
        raise InputError('upload a source image')
    return editor['background'], [layer for layer in editor.get('layers') or [] if layer is not None]


def inpaint_inputs(editor, mask_file=None, size: int = 64):
    """Source (1, 3, size, size) in [-1, 1] and keep-mask (1, 1, size, size) in
    {0, 1} (1 = keep) from the page's inputs, plus the source as a PIL image.

    The mask is the uploaded ``mask_file`` (white = keep, the size of the
    source) when given, else the brush strokes of the editor's layers
    (painted = regenerate). Both are resized to the model's base ``size``."""
    import numpy as np
    import torch
    from PIL import Image

    from projects.glide.images import hwc_to_tensor
    background, layers = editor_parts(editor)
    source = open_image(background, 'the source image').convert('RGB')
    if mask_file is not None:
        mask = open_image(mask_file, 'the mask')
        if mask.size != source.size:
            raise InputError(f'the mask is {mask.size[0]}x{mask.size[1]} but the source image is '
                             f'{source.size[0]}x{source.size[1]}: they must have the same size')
        keep = np.asarray(mask.convert('RGBA').convert('L'), np.float32) / 255 > 0.5
    else:
        keep = np.ones(source.size[::-1], bool)
        for layer in layers:
            layer = open_image(layer, 'a mask layer')
            if layer.size != source.size:
                raise InputError(f'a mask layer is {layer.size[0]}x{layer.size[1]} but the source image is '
                                 f'{source.size[0]}x{source.size[1]}: they must have the same size')
            keep &= np.asarray(layer.convert('RGBA'))[..., 3] == 0
    if keep.all():
        raise InputError('the mask keeps the whole image: paint the part to regenerate '
                         '(or upload a mask, black = regenerate)')
    image = hwc_to_tensor(source.resize((size, size), Image.BICUBIC))[None].float()
    mask_img = Image.fromarray(keep.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)
    mask = torch.from_numpy(np.asarray(mask_img) > 127).float()[None, None]
    return image, mask, source


# ------------------------------------------------------------------- model
def load_model(config: str, checkpoint: str, device: str):
    """The GLIDE model of ``config`` with ``checkpoint``'s weights, in eval
    mode; a checkpoint that does not fit is a UsageError of one line."""
    from projects.glide.apis import init_glide
    try:
        model = init_glide(config, checkpoint, device=device)
    except (OSError, RuntimeError, KeyError, ValueError) as err:  # CheckpointMismatchError is a RuntimeError
        lines = [line.strip() for line in str(err).strip().splitlines()] or [type(err).__name__]
        one_line = ' '.join([lines[0], '; '.join(lines[1:])]).strip()  # e.g. the missing keys, then a hint
        raise UsageError(f'cannot serve checkpoint {checkpoint} with config {config}: {one_line}') from None
    if not hasattr(model, 'infer') or not hasattr(model, 'unet'):
        raise UsageError(f'config {config} does not build a GLIDE text-to-image model ({type(model).__name__})')
    return model


class GlideRunner:
    """Runs requests on one loaded GLIDE model, one at a time (the samplers
    keep their timesteps on the model). Images come back as PIL images."""

    def __init__(self, model):
        from projects.glide.models.sampling import SAMPLING_DEFAULTS
        self.model = model
        self.lock = threading.Lock()
        test_cfg = dict(getattr(model, 'test_cfg', None) or {})
        self.defaults = {key: test_cfg.get(key, value) for key, value in SAMPLING_DEFAULTS.items()}
        self.size = model.unet.image_size
        self.has_upsampler = getattr(model, 'unet_up', None) is not None
        self.size_up = model.unet_up.image_size if self.has_upsampler else None

    def _infer(self, **kwargs) -> Dict:
        import torch
        with self.lock, torch.no_grad():
            return self.model.infer(show_progress=True, **kwargs)

    @staticmethod
    def to_pil(sample):
        from PIL import Image

        from projects.glide.images import to_hwc_uint8
        return Image.fromarray(to_hwc_uint8(sample.float(), allow_float=True))

    def text2im(self, prompts: Sequence[str], negative_prompt: str = '', batch_size: int = 1,
                guidance_scale: float = 3., steps=25, steps_up='fast27', sampler: str = 'ddim',
                seed: int = 0, progress=None) -> List[Tuple[object, str]]:
        """(image, caption) for ``batch_size`` images per prompt; prompt i uses
        ``seed + i``, as tools/glide_demo.py does."""
        if len(prompts) * batch_size > MAX_IMAGES:
            raise InputError(f'{len(prompts)} prompt(s) x batch {batch_size} is more than {MAX_IMAGES} images')
        gallery = []
        for i, prompt in enumerate(prompts):
            if progress is not None:
                progress(i / len(prompts), desc=f'prompt {i + 1}/{len(prompts)}')
            out = self._infer(prompt=[prompt] * batch_size, batch_size=batch_size,
                              negative_prompt=[negative_prompt] * batch_size if negative_prompt else None,
                              guidance_scale=guidance_scale, num_inference_steps=steps,
                              num_inference_steps_up=steps_up, sampler=sampler, seed=seed + i,
                              upsample_strength=self.defaults['upsample_strength'])
            for k, sample in enumerate(out['samples']):
                index = f' #{k + 1}' if batch_size > 1 else ''
                gallery.append((self.to_pil(sample), f'{prompt}{index} (seed {seed + i})'))
        return gallery

    def inpaint(self, prompt: str, image, mask, guidance_scale: float = 5., steps=25, steps_up='fast27',
                sampler: str = 'ddim', seed: int = 0):
        """The inpainted picture (PIL) of ``image`` (1, 3, s, s) where ``mask``
        (1, 1, s, s) is 0."""
        out = self._infer(prompt=prompt, inpaint_image=image, inpaint_mask=mask, guidance_scale=guidance_scale,
                          num_inference_steps=steps, num_inference_steps_up=steps_up, sampler=sampler, seed=seed,
                          upsample_strength=self.defaults['upsample_strength'])
        return self.to_pil(out['samples'][0])


# -------------------------------------------------------------------- page
def _page_error(fn):
    """Run ``fn``; an InputError or a ValueError of the model becomes a message in the page."""
    import functools

    import gradio as gr

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ValueError as err:
            raise gr.Error(str(err)) from None
    return wrapper


def _checked_upload(component, what: str):
    """``component`` (an image input of the page) reporting an upload that is
    not an image as a message in the page, not as an error in the server's log."""
    import gradio as gr
    from PIL import UnidentifiedImageError
    preprocess = component.preprocess

    def checked(payload):
        try:
            return preprocess(payload)
        except (UnidentifiedImageError, OSError) as err:
            raise gr.Error(f'{what} is not a readable image ({type(err).__name__})') from None
    component.preprocess = checked
    return component


def build_app(runner: GlideRunner, title: str = 'GLIDE'):
    """The Gradio Blocks page on ``runner``: a text -> images tab and an inpainting tab."""
    import gradio as gr
    d = runner.defaults
    steps_help = "steps: a number (1-1000) or a spec ('ddim50', 'fast27')"

    def sampling_controls(guidance: float, tab: str):
        with gr.Row():
            guidance_box = gr.Slider(0, 20, value=guidance, step=0.5, label='guidance scale')
            steps = gr.Textbox(str(d['num_inference_steps']), label=f'base steps ({runner.size}x{runner.size})',
                               info=steps_help, elem_id=f'{tab}-steps')
            steps_up = gr.Textbox(str(d['num_inference_steps_up']), visible=runner.has_upsampler,
                                  label=f'upsampler steps ({runner.size_up}x{runner.size_up})',
                                  elem_id=f'{tab}-steps-up')
            sampler = gr.Dropdown(list(SAMPLER_NAMES), value='ddim', label='sampler')
        with gr.Row():
            seed = gr.Number(0, precision=0, minimum=0, maximum=MAX_SEED, label='seed')
            randomize = gr.Checkbox(False, label='random seed')
        return guidance_box, steps, steps_up, sampler, seed, randomize

    def checked_options(guidance, steps, steps_up, sampler, seed, randomize):
        return dict(guidance_scale=check_number(guidance, 'guidance scale', 0, MAX_GUIDANCE),
                    steps=check_steps(steps, 'base steps'),
                    steps_up=check_steps(steps_up, 'upsampler steps') if runner.has_upsampler else None,
                    sampler=check_sampler(sampler), seed=pick_seed(seed, randomize))

    @_page_error
    def generate(prompt_text, negative, batch, guidance, steps, steps_up, sampler, seed, randomize,
                 progress=gr.Progress(track_tqdm=True)):
        prompts = check_prompts(prompt_text)
        batch = check_number(batch, 'batch size', 1, MAX_IMAGES, integer=True)
        options = checked_options(guidance, steps, steps_up, sampler, seed, randomize)
        gallery = runner.text2im(prompts, ' '.join(str(negative or '').split()), batch, progress=progress,
                                 **options)
        return gallery, options['seed']

    @_page_error
    def edit(editor, mask_file, prompt_text, guidance, steps, steps_up, sampler, seed, randomize,
             progress=gr.Progress(track_tqdm=True)):
        prompt = check_prompts(prompt_text)
        if len(prompt) > 1:
            raise InputError('inpainting takes one prompt (one line)')
        image, mask, source = inpaint_inputs(editor, mask_file, runner.size)
        options = checked_options(guidance, steps, steps_up, sampler, seed, randomize)
        result = runner.inpaint(prompt[0], image, mask, **options)
        return source, result, options['seed']

    system_fonts = gr.themes.Default(font=['ui-sans-serif', 'system-ui', 'sans-serif'],
                                     font_mono=['ui-monospace', 'monospace'])  # no web fonts: works offline
    with gr.Blocks(title=title, analytics_enabled=False, theme=system_fonts) as app:
        up = f', {runner.size}->{runner.size_up} upsampler' if runner.has_upsampler else ''
        gr.Markdown(f'## {title}\nText to images and inpainting on `{runner.model.__class__.__name__}` '
                    f'({runner.size}x{runner.size} base{up})')
        with gr.Tab('Text to images'):
            prompt = gr.Textbox(EXAMPLE_PROMPT, lines=2, label='prompts (one per line)', elem_id='prompt')
            negative = gr.Textbox('', label='negative prompt (optional)')
            batch = gr.Slider(1, 8, value=1, step=1, label='images per prompt')
            controls = sampling_controls(d['guidance_scale'], 'text2im')
            button = gr.Button('Generate', variant='primary', elem_id='generate')
            gallery = gr.Gallery(label='images', columns=4, format='png', show_download_button=True,
                                 elem_id='gallery')
            used_seed = gr.Number(label='seed used', precision=0, interactive=False)
            button.click(generate, [prompt, negative, batch, *controls], [gallery, used_seed],
                         api_name='text2im', concurrency_id='model')
        with gr.Tab('Inpainting'):
            with gr.Row():
                editor = _checked_upload(gr.ImageEditor(
                    type='pil', label='source: paint the part to regenerate', layers=False, transforms=(),
                    brush=gr.Brush(colors=['#ff00ff'], color_mode='fixed'), sources=('upload', 'clipboard')),
                    'the source image')
                mask_file = _checked_upload(gr.Image(
                    type='filepath', label='or upload a mask (white = keep, same size)', sources=('upload',)),
                    'the mask')
            edit_prompt = gr.Textbox('', label='prompt')
            edit_controls = sampling_controls(5., 'inpaint')
            edit_button = gr.Button('Inpaint', variant='primary')
            with gr.Row():
                source_out = gr.Image(label='source', format='png', interactive=False)
                result_out = gr.Image(label='result', format='png', interactive=False)
            edit_seed = gr.Number(label='seed used', precision=0, interactive=False)
            edit_button.click(edit, [editor, mask_file, edit_prompt, *edit_controls],
                              [source_out, result_out, edit_seed], api_name='inpaint', concurrency_id='model')
    return app.queue(default_concurrency_limit=1)


# ---------------------------------------------------------------- start-up
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='GLIDE web page: text to images and inpainting')
    parser.add_argument('--config', default=DEFAULT_CONFIG,
                        help='model config (default: the bundled tiny shapes 64->256 cascade)')
    parser.add_argument('--checkpoint', default=DEFAULT_CHECKPOINT,
                        help='weights (default: projects/glide/weights/glide_tiny_shapes-64-256.pth)')
    parser.add_argument('--host', default='127.0.0.1',
                        help='address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: everyone)')
    parser.add_argument('--port', type=int, default=7860, help='port (default 7860)')
    parser.add_argument('--device', default=None, help='cpu, cuda or cuda:N (default: cuda when available)')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        from projects.glide.engine.devices import DeviceError, check_device
        config = check_file(args.config, 'config file')
        checkpoint = check_file(args.checkpoint, 'checkpoint file')
        if not 0 < args.port < 65536:
            raise UsageError(f'--port must be in 1-65535, got {args.port}')
        try:
            import torch
            device = check_device(args.device) if args.device else ('cuda' if torch.cuda.is_available() else 'cpu')
        except DeviceError as err:
            raise UsageError(str(err)) from None
        runner = GlideRunner(load_model(config, checkpoint, device))
    except UsageError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')
    app = build_app(runner)
    print(f'serving {osp.basename(checkpoint)} on http://{args.host}:{args.port}', file=sys.stderr, flush=True)
    app.launch(server_name=args.host, server_port=args.port, show_api=True, show_error=True, share=False,
               inbrowser=False)
    return 0


if __name__ == '__main__':
    sys.exit(main())
