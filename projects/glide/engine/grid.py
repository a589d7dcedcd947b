"""Saving generated images: file names, atomic PNG writes, captioned grids."""
import math
import re
import unicodedata
from typing import Dict, List, Optional, Sequence

from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from projects.glide.fileio import atomic_path
from projects.glide.images import to_hwc_uint8

GRID_PAD = 4
MIN_CELL_WIDTH = 160
MAX_CAPTION_LINES = 4


def prompt_slug(prompt: str, max_len: int = 60) -> str:
    """File-name-safe slug of a prompt: lower-case ASCII words joined by '-',
    at most ``max_len`` characters (cut at a word boundary), ``'prompt'``
    when nothing is left."""
    text = unicodedata.normalize('NFKD', str(prompt)).encode(
        'ascii', 'ignore').decode('ascii').lower()
    slug = re.sub(r'[^a-z0-9]+', '-', text).strip('-')
    if len(slug) > max_len:
        cut = slug[:max_len + 1]
        slug = cut[:cut.rfind('-')] if '-' in cut[1:] else slug[:max_len]
        slug = slug.strip('-')
    return slug or 'prompt'


#: the names :func:`image_filename` gives; group 1 is the index
IMAGE_NAME = re.compile(r'^(\d{5})_[a-z0-9-]+\.png$')


def image_filename(index: int, prompt: str) -> str:
    """``{index:05d}_{prompt-slug}.png``."""
    return f'{int(index):05d}_{prompt_slug(prompt)}.png'


def save_png(image, path: str, text: Optional[Dict[str, str]] = None) -> None:
    """Write a PNG atomically (a temporary file renamed into place), with
    optional text metadata. ``image`` is a PIL image, or a uint8 or [-1, 1]
    float RGB image (see :func:`~projects.glide.images.to_hwc_uint8`)."""
    if not isinstance(image, Image.Image):
        image = Image.fromarray(to_hwc_uint8(image, allow_float=True), 'RGB')
    info = None
    if text:
        info = PngInfo()
        for key, value in text.items():
            info.add_itxt(key, str(value))
    with atomic_path(path) as tmp:
        image.save(tmp, format='PNG', pnginfo=info)


def read_png_text(path: str) -> Dict[str, str]:
    """Text metadata of a PNG written by :func:`save_png`."""
    with Image.open(path) as im:
        im.load()
        return dict(getattr(im, 'text', {}) or {})


def _font():
    return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int,
          max_lines: int) -> List[str]:
    """Greedy word wrap to ``width`` pixels, at most ``max_lines`` lines
    (the last one ends with an ellipsis when text is cut)."""
    words, lines, line = text.split(), [], ''
    for word in words:
        candidate = f'{line} {word}'.strip()
        if draw.textlength(candidate, font=font) <= width or not line:
            line = candidate
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    lines = [_fit(draw, ln, font, width) for ln in lines]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = _fit(draw, lines[-1] + ' ...', font, width, force=True)
    return lines


def _fit(draw, line: str, font, width: int, force: bool = False) -> str:
    """Cut a single line to ``width`` pixels with a trailing '...'."""
    if draw.textlength(line, font=font) <= width and not (
            force and not line.endswith('...')):
        return line
    base = line[:-4] if line.endswith(' ...') else line
    while base and draw.textlength(base + '...', font=font) > width:
        base = base[:-1]
    return base.rstrip() + '...'


def captioned_grid(images: Sequence,
                   captions: Sequence[str],
                   ncols: Optional[int] = None,
                   max_lines: int = MAX_CAPTION_LINES,
                   min_cell_width: int = MIN_CELL_WIDTH) -> Image.Image:
    """Tile images on a white canvas with each caption written under its image.

    Args:
        images: uint8 or [-1, 1] float RGB images (see
            :func:`~projects.glide.images.to_hwc_uint8`); all are shown
            at the size of the first one.
        captions: one caption per image.
        ncols: columns (default ``ceil(sqrt(n))``).
        max_lines: caption lines per tile (longer captions end with '...').
        min_cell_width: a cell is at least this wide so that captions of
            small images stay readable (the image is centred in its cell).

    Layout: cell width ``cw = max(W, min_cell_width)``; the canvas is
    ``ncols * cw + (ncols + 1) * GRID_PAD`` wide and ``nrows * (H + caption
    height) + (nrows + 1) * GRID_PAD`` high, where the caption height fits
    the longest wrapped caption.
    """
    if len(images) == 0:
        raise ValueError('no images to put in a grid')
    if len(images) != len(captions):
        raise ValueError(f'{len(images)} images but {len(captions)} captions')
    arrays = [to_hwc_uint8(im, allow_float=True) for im in images]
    h, w = arrays[0].shape[:2]
    tiles = [
        Image.fromarray(a, 'RGB') if a.shape[:2] == (h, w) else
        Image.fromarray(a, 'RGB').resize((w, h), Image.BICUBIC)
        for a in arrays
    ]
    n = len(tiles)
    ncols = max(1, min(n, ncols or math.ceil(math.sqrt(n))))
    nrows = math.ceil(n / ncols)
    cell_w = max(w, min_cell_width)
    font = _font()
    scratch = ImageDraw.Draw(Image.new('RGB', (1, 1)))
    wrapped = [
        _wrap(scratch, str(c), font, cell_w - 2, max_lines) for c in captions
    ]
    ascent, descent = font.getmetrics() if hasattr(font, 'getmetrics') \
        else (10, 2)
    line_h = ascent + descent + 2
    cap_h = max(1, max(len(ls) for ls in wrapped)) * line_h + GRID_PAD
    cell_h = h + cap_h
    canvas = Image.new('RGB', (ncols * cell_w + (ncols + 1) * GRID_PAD,
                               nrows * cell_h + (nrows + 1) * GRID_PAD),
                       'white')
    draw = ImageDraw.Draw(canvas)
    for i, (tile, lines) in enumerate(zip(tiles, wrapped)):
        r, c = divmod(i, ncols)
        x0 = GRID_PAD + c * (cell_w + GRID_PAD)
        y0 = GRID_PAD + r * (cell_h + GRID_PAD)
        canvas.paste(tile, (x0 + (cell_w - w) // 2, y0))
        y = y0 + h + GRID_PAD // 2
        for line in lines:
            tw = draw.textlength(line, font=font)
            draw.text((x0 + (cell_w - tw) / 2, y), line, fill='black',
                      font=font)
            y += line_h
    return canvas
