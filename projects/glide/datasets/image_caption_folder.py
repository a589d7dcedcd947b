"""A folder of the user's own (image, caption) pairs, for fine-tuning GLIDE.

Images (``.png``, ``.jpg``, ``.jpeg``, ``.webp``, ``.bmp``, any case) live
under ``root``. Captions come from ONE of:

* a captions file (``captions=...``), UTF-8 (a BOM is tolerated):

  - ``.jsonl``: one object ``{"file": "relative/path.png", "caption": "..."}``
    per line; blank lines are skipped.
  - ``.json``: an object ``{"relative/path.png": "caption", ...}`` or a list
    of objects as in ``.jsonl``.
  - ``.csv`` / ``.tsv``: a header row with a ``file`` (or ``image``) column
    and a ``caption`` (or ``text``) column; other columns are ignored.

  In objects, ``image`` and ``text`` are accepted for ``file`` and
  ``caption`` too. ``file`` is relative to ``root`` (``/`` or the OS
  separator). A relative ``captions`` path is looked up under ``root``
  first, then in the working directory. Items follow the file's order; an
  image may appear several times (several captions); images under ``root``
  that the file does not mention are not used.
* sidecar text files (``captions=None``): ``root`` is searched recursively and
  every image ``a/b.jpg`` needs ``a/b.txt`` (same folder, same stem) holding
  its caption. Items are sorted by relative path. Hidden files and folders
  (names starting with ``.``, e.g. ``.ipynb_checkpoints`` or macOS ``._x.jpg``
  files) are skipped.

Captions are stripped of surrounding white space. An empty caption is allowed
and trains the unconditional (empty prompt) branch, like caption dropout; a
caption that is not a string (number, null, list...) is an error.

Every item is made the same way: the image is opened with PIL, rotated
according to its EXIF orientation, converted to RGB (images with an alpha
channel or a transparent palette colour are composited on a white
background), centre-cropped to a square of side ``min(width, height)``, then
resized to ``resolution`` with PIL's (antialiased) BICUBIC filter. With
``random_flip`` it is mirrored horizontally with probability 1/2, decided by
``(seed, index)`` only, so an item is the same every time it is read (in every
epoch and worker). ``low_res`` is the final ``resolution`` image (after the
flip) downsampled by PIL BICUBIC, as the GLIDE upsampler's conditioning.
"""
import csv
import io
import json
import os
import os.path as osp
from typing import List, Optional, Tuple

import numpy as np
from mmagic.registry import DATASETS
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from ..images import hwc_to_tensor

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.webp', '.bmp')
CAPTION_FORMATS = ('.jsonl', '.json', '.csv', '.tsv')
FILE_KEYS = ('file', 'image')
CAPTION_KEYS = ('caption', 'text')
_MAX_LISTED = 5


def _listing(names: List[str]) -> str:
    shown = ', '.join(repr(n) for n in names[:_MAX_LISTED])
    more = len(names) - _MAX_LISTED
    return shown + (f' and {more} more' if more > 0 else '')


def _is_image(name: str) -> bool:
    return osp.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _pick(entry: dict, keys: Tuple[str, ...], where: str):
    found = [k for k in keys if k in entry]
    if not found:
        raise ValueError(f'{where} has no {" or ".join(map(repr, keys))} key '
                         f'(keys: {sorted(map(str, entry))})')
    if len(found) > 1:
        raise ValueError(f'{where} has both {found[0]!r} and {found[1]!r}; '
                         'give only one')
    return entry[found[0]]


def _entry_from_object(entry, where: str) -> Tuple[object, object]:
    if not isinstance(entry, dict):
        raise ValueError(f'{where} must be an object with "file" and '
                         f'"caption", got {type(entry).__name__}')
    return _pick(entry, FILE_KEYS, where), _pick(entry, CAPTION_KEYS, where)


def _read_text(path: str) -> str:
    try:
        with open(path, encoding='utf-8-sig') as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f'{path} is not valid UTF-8 text: {e}') from None


def parse_captions_file(path: str) -> List[Tuple[object, object, str]]:
    """Read a captions file (see the module doc) without validating values.

    Returns:
        list[tuple]: ``(file, caption, where)`` in file order, ``where``
        locating the entry in the file for error messages.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unsupported extension, not UTF-8, malformed JSON/JSONL
            (with the line number) or CSV/TSV without the needed columns.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'captions file not found: {path}')
    ext = osp.splitext(path)[1].lower()
    if ext not in CAPTION_FORMATS:
        raise ValueError(f'captions file {path}: unsupported extension '
                         f'{ext!r}; expected one of {", ".join(CAPTION_FORMATS)}'
                         ' (or captions=None for sidecar .txt files)')
    text = _read_text(path)
    entries = []
    if ext == '.jsonl':
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            where = f'captions file {path}, line {lineno}'
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f'{where}: invalid JSON: {e.msg} (column '
                                 f'{e.colno})') from None
            entries.append((*_entry_from_object(obj, where), where))
    elif ext == '.json':
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f'captions file {path}: invalid JSON at line '
                             f'{e.lineno}, column {e.colno}: {e.msg}') from None
        if isinstance(obj, dict):
            entries = [(k, v, f'captions file {path}, key {k!r}')
                       for k, v in obj.items()]
        elif isinstance(obj, list):
            for i, item in enumerate(obj):
                where = f'captions file {path}, entry {i}'
                entries.append((*_entry_from_object(item, where), where))
        else:
            raise ValueError(f'captions file {path}: expected an object '
                             '{file: caption} or a list of {"file", '
                             '"caption"} objects, got '
                             f'{type(obj).__name__}')
    else:
        delimiter = '\t' if ext == '.tsv' else ','
        reader = csv.reader(io.StringIO(text, newline=''), delimiter=delimiter)
        try:
            rows = [(reader.line_num, row) for row in reader]
        except csv.Error as e:
            raise ValueError(f'captions file {path}, line {reader.line_num}: '
                             f'{e}') from None
        rows = [(n, r) for n, r in rows if any(c.strip() for c in r)]
        if not rows:
            raise ValueError(f'captions file {path} is empty (expected a '
                             'header row with "file" and "caption" columns)')
        header = [c.strip().lower() for c in rows[0][1]]
        cols = []
        for keys in (FILE_KEYS, CAPTION_KEYS):
            found = [k for k in keys if k in header]
            if len(found) != 1:
                raise ValueError(
                    f'captions file {path}: the header row {rows[0][1]} needs '
                    f'exactly one of the columns {" / ".join(keys)} (split by '
                    f'{delimiter!r})')
            cols.append(header.index(found[0]))
        for lineno, row in rows[1:]:
            where = f'captions file {path}, line {lineno}'
            if len(row) <= max(cols):
                raise ValueError(f'{where}: expected at least {max(cols) + 1} '
                                 f'columns, got {len(row)}: {row}')
            entries.append((row[cols[0]], row[cols[1]], where))
    return entries


def _load_rgb(path: str) -> Image.Image:
    """Open an image as RGB; alpha is composited on a white background."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode == 'P' and 'transparency' in im.info:
            im = im.convert('RGBA')
        if im.mode in ('RGBA', 'LA', 'PA', 'La', 'RGBa'):
            im = im.convert('RGBA')
            white = Image.new('RGBA', im.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, im).convert('RGB')
        return im.convert('RGB')


def _center_crop_resize(im: Image.Image, side: int) -> Image.Image:
    w, h = im.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    # crop first: ``resize(box=...)`` would let the filter read pixels
    # outside the box
    im = im.crop((left, top, left + s, top + s))
    return im.resize((side, side), Image.BICUBIC)


def _check_size(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
            or value < 1:
        raise ValueError(f'{name} must be a positive integer, got {value!r}')
    return int(value)


@DATASETS.register_module()
class ImageCaptionFolderDataset(Dataset):
    """(image, caption) pairs from a folder, for fine-tuning GLIDE.

    See the module doc for the layouts, caption rules and image processing.

    Args:
        root: folder holding the images (searched recursively in sidecar
            mode).
        captions: a ``.jsonl``/``.json``/``.csv``/``.tsv`` captions file, or
            None to read a ``.txt`` next to every image.
        resolution: side R of ``img``.
        low_res: if set, also return ``low_res``, the R image downsampled to
            this side (e.g. 64 to train the 64->256 upsampler at R=256).
        random_flip: mirror horizontally with probability 1/2, decided by
            ``(seed, index)`` (deterministic per item, same in every epoch).
        seed: seed of the flips.

    Items are dicts: ``img`` float32 (3, R, R) RGB in [-1, 1]; ``low_res``
    float32 (3, r, r) in [-1, 1] (only if ``low_res`` is set); ``prompt`` str;
    ``index`` int; ``file`` str, the image path relative to ``root`` (``/``
    separated). ``default_collate`` batches them for ``Glide.loss``.

    Raises:
        FileNotFoundError: ``root`` or the captions file does not exist, or
            captions name images that do not exist.
        ValueError: malformed captions file, non-string caption, image without
            a sidecar caption, or no items at all.
    """
    metainfo = dict(dataset_name='image_caption_folder')

    def __init__(self,
                 root: str,
                 captions: Optional[str] = None,
                 resolution: int = 64,
                 low_res: Optional[int] = None,
                 random_flip: bool = False,
                 seed: int = 0):
        self.resolution = _check_size('resolution', resolution)
        self.low_res = None if low_res is None else _check_size(
            'low_res', low_res)
        if self.low_res is not None and self.low_res > self.resolution:
            raise ValueError(f'low_res ({low_res}) must not exceed resolution '
                             f'({resolution}); it is a downsampled copy')
        self.random_flip = bool(random_flip)
        self.seed = int(seed)
        root = os.fspath(root)
        if not osp.isdir(root):
            raise FileNotFoundError(
                f'image folder not found: {root}' if not osp.exists(root) else
                f'root {root} is not a folder')
        self.root = root
        if captions is None:
            self.captions_file = None
            self.data_list = self._scan_sidecar()
        else:
            self.captions_file = self._find_captions(os.fspath(captions))
            self.data_list = self._from_captions_file(self.captions_file)

    # ------------------------------------------------------------ indexing --

    def _find_captions(self, captions: str) -> str:
        candidates = [captions] if osp.isabs(captions) else [
            osp.join(self.root, captions), captions
        ]
        for c in candidates:
            if osp.isfile(c):
                return c
        tried = f' (also tried {candidates[1]})' if len(candidates) > 1 \
            else ''
        raise FileNotFoundError(
            f'captions file not found: {candidates[0]}{tried}')

    def _from_captions_file(self, path: str) -> List[Tuple[str, str]]:
        data, missing = [], []
        for file, caption, where in parse_captions_file(path):
            if not isinstance(file, str) or not file.strip():
                raise ValueError(f'{where}: the image path must be a '
                                 f'non-empty string, got {file!r}')
            if not isinstance(caption, str):
                raise ValueError(f'{where}: the caption of {file!r} must be a '
                                 f'string, got {type(caption).__name__} '
                                 f'({caption!r})')
            rel = file.strip().replace('\\', '/')
            if osp.isabs(rel) or rel.startswith('/'):
                raise ValueError(f'{where}: image path {file!r} must be '
                                 f'relative to root {self.root}')
            rel = osp.normpath(rel).replace(os.sep, '/')
            if rel == '..' or rel.startswith('../'):
                raise ValueError(f'{where}: image path {file!r} is outside '
                                 f'root {self.root}')
            if not _is_image(rel):
                raise ValueError(f'{where}: {file!r} is not a supported image '
                                 f'({", ".join(IMAGE_EXTENSIONS)})')
            if not osp.isfile(osp.join(self.root, rel)):
                missing.append((rel, where))
            data.append((rel, caption.strip()))
        if missing:
            raise FileNotFoundError(
                f'{len(missing)} image(s) named in the captions file are not '
                f'under root {self.root}: ' + '; '.join(
                    f'{rel!r} ({where})'
                    for rel, where in missing[:_MAX_LISTED]) +
                (f' and {len(missing) - _MAX_LISTED} more'
                 if len(missing) > _MAX_LISTED else ''))
        if not data:
            raise ValueError(f'empty dataset: captions file {path} has no '
                             'entries')
        return data

    def _scan_sidecar(self) -> List[Tuple[str, str]]:
        images = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
            rel_dir = osp.relpath(dirpath, self.root)
            for name in filenames:
                if name.startswith('.') or not _is_image(name):
                    continue
                rel = name if rel_dir == '.' else osp.join(rel_dir, name)
                images.append(rel.replace(os.sep, '/'))
        images.sort()
        if not images:
            raise ValueError(f'empty dataset: no images '
                             f'({", ".join(IMAGE_EXTENSIONS)}) under '
                             f'{self.root}')
        data, uncaptioned = [], []
        for rel in images:
            txt = osp.join(self.root, osp.splitext(rel)[0] + '.txt')
            if osp.isfile(txt):
                data.append((rel, _read_text(txt).strip()))
            else:
                uncaptioned.append(rel)
        if uncaptioned:
            raise ValueError(
                f'{len(uncaptioned)} image(s) under {self.root} have no '
                f'caption (a .txt file with the same name next to the image): '
                f'{_listing(uncaptioned)}; add them or pass captions=<file>')
        return data

    # ------------------------------------------------------------- access --

    def __len__(self) -> int:
        return len(self.data_list)

    def _check_index(self, index: int) -> int:
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f'index {index} out of range for {len(self)}')
        return index

    def is_flipped(self, index: int) -> bool:
        """Whether item ``index`` is mirrored (depends on ``seed``, ``index``
        and ``random_flip`` only)."""
        if not self.random_flip:
            return False
        index = self._check_index(index)
        return bool(np.random.default_rng([self.seed, index]).random() < 0.5)

    def __getitem__(self, index: int) -> dict:
        index = self._check_index(index)
        rel, prompt = self.data_list[index]
        path = osp.join(self.root, rel)
        try:
            im = _load_rgb(path)
        except Exception as e:  # corrupt / truncated / unreadable files
            raise ValueError(f'cannot read image {path} (item {index}): '
                             f'{type(e).__name__}: {e}') from e
        im = _center_crop_resize(im, self.resolution)
        if self.is_flipped(index):
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        item = dict(img=hwc_to_tensor(im), prompt=prompt, index=index, file=rel)
        if self.low_res is not None:
            item['low_res'] = hwc_to_tensor(
                im.resize((self.low_res, self.low_res), Image.BICUBIC))
        return item
