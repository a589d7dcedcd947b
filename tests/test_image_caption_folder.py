"""Tests of ImageCaptionFolderDataset (user (image, caption) folders)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.dataset import default_collate
from PIL import Image

from projects.glide.datasets.image_caption_folder import ImageCaptionFolderDataset, parse_captions_file

ROOT = Path(__file__).resolve().parents[1]
RED, GREEN, BLUE = (255, 0, 0), (0, 128, 0), (0, 0, 255)


def save(path: Path, size=(100, 60), color=RED, mode='RGB', array=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array) if array is not None else Image.new(
        mode, size, color)
    im.save(path)
    return path


@pytest.fixture
def folder(tmp_path):
    """root/ with a.png (red 100x60), sub/b.jpg (green 40x80), c.webp (blue)."""
    root = tmp_path / 'imgs'
    save(root / 'a.png', (100, 60), RED)
    save(root / 'sub' / 'b.jpg', (40, 80), GREEN)
    save(root / 'c.webp', (32, 32), BLUE)
    return root


EXPECTED = {'a.png': 'a red thing', 'sub/b.jpg': 'a green thing',
            'c.webp': 'a blue thing'}


def write_captions(root: Path, fmt: str) -> Path:
    items = list(EXPECTED.items())
    if fmt == 'jsonl':
        text = '\n'.join(json.dumps(dict(file=f, caption=c)) for f, c in items)
        text += '\n\n'  # trailing blank lines are fine
    elif fmt == 'json-dict':
        text = json.dumps(dict(items))
    elif fmt == 'json-list':
        text = json.dumps([dict(image=f, text=c) for f, c in items])
    elif fmt == 'csv':
        text = 'id,file,caption\n' + ''.join(
            f'{i},{f},"{c}, really"\n' for i, (f, c) in enumerate(items))
    elif fmt == 'tsv':
        text = 'image\ttext\n' + ''.join(f'{f}\t{c}\n' for f, c in items)
    ext = {'json-dict': 'json', 'json-list': 'json'}.get(fmt, fmt)
    path = root.parent / f'captions.{ext}'
    path.write_text(text, encoding='utf-8')
    return path


def as_rgb(t: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) float in [0, 255]."""
    return (t.permute(1, 2, 0).numpy() + 1) * 127.5


@pytest.mark.parametrize('fmt', ['jsonl', 'json-dict', 'json-list', 'csv',
                                 'tsv'])
def test_captions_formats(folder, fmt):
    path = write_captions(folder, fmt)
    ds = ImageCaptionFolderDataset(str(folder), captions=str(path),
                                   resolution=16)
    suffix = ', really' if fmt == 'csv' else ''
    assert [f for f, _ in ds.data_list] == list(EXPECTED)  # file order
    assert len(ds) == 3
    for i, (f, c) in enumerate(EXPECTED.items()):
        item = ds[i]
        assert item['file'] == f and item['prompt'] == c + suffix
        assert item['index'] == i
        assert item['img'].shape == (3, 16, 16)
    assert ds[-1]['file'] == 'c.webp'


def test_captions_path_relative_to_root(folder):
    (folder / 'caps.jsonl').write_text(
        json.dumps(dict(file='a.png', caption='x')), encoding='utf-8')
    ds = ImageCaptionFolderDataset(folder, captions='caps.jsonl')
    assert ds.data_list == [('a.png', 'x')]


def test_sidecar(folder):
    for f, c in EXPECTED.items():
        (folder / f).with_suffix('.txt').write_text(f'  {c}\n',
                                                    encoding='utf-8')
    # hidden files/folders are skipped, other files ignored
    (folder / '.ipynb_checkpoints').mkdir()
    save(folder / '.ipynb_checkpoints' / 'a.png')
    (folder / '._a.png').write_bytes(b'not an image')
    (folder / 'notes.md').write_text('hi')
    ds = ImageCaptionFolderDataset(folder)
    assert ds.data_list == sorted(EXPECTED.items())  # sorted by path
    item = ds[1]
    assert item['file'] == 'c.webp' and item['prompt'] == 'a blue thing'


def test_item_values_and_ranges(folder):
    path = write_captions(folder, 'jsonl')
    ds = ImageCaptionFolderDataset(folder, captions=path, resolution=32)
    red = ds[0]['img']
    assert red.dtype == torch.float32 and red.shape == (3, 32, 32)
    want = torch.tensor([1., -1., -1.]).view(3, 1, 1).expand(3, 32, 32)
    assert torch.equal(red, want)  # lossless PNG: exact after crop + resize
    green = as_rgb(ds[1]['img'])  # JPEG: close
    assert np.abs(green - np.array(GREEN)).max() < 6
    for i in range(3):
        img = ds[i]['img']
        assert img.min() >= -1 and img.max() <= 1


def test_center_crop_and_resize(tmp_path):
    # left third red, middle blue, right third green: the centre square of a
    # 90x30 image is the blue middle
    arr = np.zeros((30, 90, 3), np.uint8)
    arr[:, :30] = RED
    arr[:, 30:60] = BLUE
    arr[:, 60:] = GREEN
    save(tmp_path / 'r' / 'x.png', array=arr)
    (tmp_path / 'r' / 'x.txt').write_text('stripes')
    img = ImageCaptionFolderDataset(tmp_path / 'r', resolution=8)[0]['img']
    assert torch.equal(img, torch.tensor([-1., -1., 1.]).view(3, 1, 1)
                       .expand(3, 8, 8))
    # a tall image keeps its vertical middle; upsampling small images works
    arr = np.zeros((90, 30, 3), np.uint8)
    arr[30:60] = 255
    save(tmp_path / 't' / 'y.bmp', array=arr)
    (tmp_path / 't' / 'y.txt').write_text('white band')
    img = ImageCaptionFolderDataset(tmp_path / 't', resolution=64)[0]['img']
    assert torch.equal(img, torch.ones(3, 64, 64))


def test_low_res(folder):
    arr = np.zeros((64, 64, 3), np.uint8)
    arr[:, :32] = 255  # left half white
    save(folder / 'half.png', array=arr)
    path = folder / 'caps.jsonl'
    path.write_text(json.dumps(dict(file='half.png', caption='h')) + '\n' +
                    json.dumps(dict(file='a.png', caption='r')))
    ds = ImageCaptionFolderDataset(folder, path, resolution=32, low_res=8)
    item = ds[0]
    assert item['img'].shape == (3, 32, 32)
    assert item['low_res'].shape == (3, 8, 8)
    assert item['low_res'].dtype == torch.float32
    assert item['low_res'].min() >= -1 and item['low_res'].max() <= 1
    lr = item['low_res'][0]
    assert torch.all(lr[:, :3] == 1) and torch.all(lr[:, 5:] == -1)
    # antialiased: the low-res image is close to the box average of img
    box = torch.nn.functional.avg_pool2d(item['img'][None], 4)[0]
    assert (box - item['low_res']).abs().mean() < 0.05
    red = ds[1]['low_res']
    assert torch.equal(red, torch.tensor([1., -1., -1.]).view(3, 1, 1)
                       .expand(3, 8, 8))
    assert 'low_res' not in ImageCaptionFolderDataset(folder, path)[0]
    with pytest.raises(ValueError, match='low_res .* must not exceed'):
        ImageCaptionFolderDataset(folder, path, resolution=32, low_res=64)


def test_random_flip_deterministic(tmp_path):
    arr = np.zeros((16, 16, 3), np.uint8)
    arr[:, :8] = 255  # left half white
    root = tmp_path / 'r'
    for i in range(12):
        save(root / f'{i:02d}.png', array=arr)
        (root / f'{i:02d}.txt').write_text(f'img {i}')
    plain = ImageCaptionFolderDataset(root, resolution=16)
    assert all(plain[i]['img'][0, 0, 0] == 1 for i in range(12))

    ds = ImageCaptionFolderDataset(root, resolution=16, low_res=4,
                                   random_flip=True, seed=3)
    flips = [ds.is_flipped(i) for i in range(12)]
    assert 0 < sum(flips) < 12
    for i in range(12):
        item = ds[i]
        left_white = bool(item['img'][0, 0, 0] == 1)
        assert left_white != flips[i]
        want = plain[i]['img'].flip(-1) if flips[i] else plain[i]['img']
        assert torch.equal(item['img'], want)
        assert bool(item['low_res'][0, 0, 0] > 0) == left_white
        assert torch.equal(item['img'], ds[i]['img'])  # same on every read
    again = ImageCaptionFolderDataset(root, resolution=16, random_flip=True,
                                      seed=3)
    assert [again.is_flipped(i) for i in range(12)] == flips
    other = ImageCaptionFolderDataset(root, resolution=16, random_flip=True,
                                      seed=4)
    assert [other.is_flipped(i) for i in range(12)] != flips


def test_alpha_composited_on_white(tmp_path):
    root = tmp_path / 'r'
    arr = np.zeros((8, 8, 4), np.uint8)
    arr[..., 0] = 255  # red, ...
    arr[:, :4, 3] = 255  # opaque on the left, transparent on the right
    save(root / 'rgba.png', array=arr)
    save(root / 'la.png', (8, 8), (0, 0), mode='LA')  # transparent black
    pal = Image.new('P', (8, 8), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.save(root / 'pal.png', transparency=1)  # transparent palette colour
    for name in ('rgba', 'la', 'pal'):
        (root / f'{name}.txt').write_text(name)
    ds = ImageCaptionFolderDataset(root, resolution=8)
    by_file = {ds[i]['file']: as_rgb(ds[i]['img']) for i in range(len(ds))}
    rgba = by_file['rgba.png']
    assert np.array_equal(rgba[:, 0], np.tile([255., 0, 0], (8, 1)))
    assert np.array_equal(rgba[:, -1], np.full((8, 3), 255.))
    assert np.array_equal(by_file['la.png'], np.full((8, 8, 3), 255.))
    assert np.array_equal(by_file['pal.png'], np.full((8, 8, 3), 255.))


def test_exif_orientation_and_grayscale(tmp_path):
    root = tmp_path / 'r'
    root.mkdir()
    arr = np.zeros((20, 20, 3), np.uint8)
    arr[:, :10] = RED
    arr[:, 10:] = BLUE
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 3  # orientation: rotated 180 degrees
    im.save(root / 'rot.png', exif=exif)
    save(root / 'gray.png', (6, 6), 200, mode='L')
    for name in ('rot', 'gray'):
        (root / f'{name}.txt').write_text(name)
    ds = ImageCaptionFolderDataset(root, resolution=4)
    gray, rot = (as_rgb(ds[i]['img']) for i in range(2))
    assert np.array_equal(rot[:, 0], np.tile([0., 0, 255], (4, 1)))
    assert np.array_equal(rot[:, -1], np.tile([255., 0, 0], (4, 1)))
    assert np.allclose(gray, 200)


def test_empty_captions_allowed(folder):
    path = folder.parent / 'c.json'
    path.write_text(json.dumps({'a.png': '', 'c.webp': '   '}))
    ds = ImageCaptionFolderDataset(folder, path)
    assert [ds[i]['prompt'] for i in range(2)] == ['', '']


# ------------------------------------------------------------------ errors --


def test_error_root_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match='image folder not found.*nope'):
        ImageCaptionFolderDataset(tmp_path / 'nope')


def test_error_captions_missing(folder):
    with pytest.raises(FileNotFoundError,
                       match='captions file not found.*missing.jsonl'):
        ImageCaptionFolderDataset(folder, 'missing.jsonl')


@pytest.mark.parametrize('name,text,match', [
    ('c.jsonl', '{"file": "a.png", "caption": "ok"}\n\n{"file": "c.webp",',
     r'c\.jsonl, line 3: invalid JSON'),
    ('c.jsonl', '{"file": "a.png", "caption": "ok"}\n["a.png", "x"]',
     'line 2 must be an object'),
    ('c.jsonl', '{"file": "a.png", "cap": "ok"}', "line 1 has no 'caption' or "
     "'text' key"),
    ('c.jsonl', '{"file": "a.png", "image": "a.png", "caption": "x"}',
     "has both 'file' and 'image'"),
    ('c.json', '{"a.png": "x",}', 'invalid JSON at line 1'),
    ('c.json', '"just a string"', 'expected an object'),
    ('c.csv', 'path,caption\na.png,x\n', 'needs exactly one of the columns '
     'file / image'),
    ('c.csv', 'file,caption\na.png\n', 'line 2: expected at least 2 columns'),
    ('c.csv', '', 'is empty'),
    ('c.txt', 'a.png x', "unsupported extension '.txt'"),
])
def test_error_captions_unparseable(folder, name, text, match):
    path = folder.parent / name
    path.write_text(text, encoding='utf-8')
    with pytest.raises(ValueError, match=match):
        ImageCaptionFolderDataset(folder, path)


def test_error_not_utf8(folder):
    path = folder.parent / 'c.csv'
    path.write_bytes(b'file,caption\na.png,caf\xe9\n')
    with pytest.raises(ValueError, match='not valid UTF-8'):
        parse_captions_file(str(path))


def test_error_caption_points_to_missing_image(folder):
    path = folder.parent / 'c.jsonl'
    path.write_text('\n'.join(json.dumps(dict(file=f, caption='x')) for f in
                              ['a.png', 'gone.png', 'sub/also_gone.jpg']))
    with pytest.raises(FileNotFoundError,
                       match=r"2 image\(s\) .* 'gone.png' \(captions file .*"
                       r"line 2\); 'sub/also_gone.jpg' .*line 3"):
        ImageCaptionFolderDataset(folder, path)


@pytest.mark.parametrize('entry,match', [
    (dict(file='a.png', caption=3), 'caption of .a.png. must be a string, '
     'got int'),
    (dict(file='a.png', caption=None), 'must be a string, got NoneType'),
    (dict(file='', caption='x'), 'image path must be a non-empty string'),
    (dict(file='/etc/a.png', caption='x'), 'must be relative to root'),
    (dict(file='../a.png', caption='x'), 'is outside root'),
    (dict(file='a.gif', caption='x'), 'not a supported image'),
])
def test_error_bad_entries(folder, entry, match):
    path = folder.parent / 'c.jsonl'
    path.write_text(json.dumps(entry))
    with pytest.raises(ValueError, match=match):
        ImageCaptionFolderDataset(folder, path)


def test_error_sidecar_missing_captions(tmp_path):
    root = tmp_path / 'r'
    for i in range(7):
        save(root / f'{i}.png', (4, 4))
    (root / '3.txt').write_text('has one')
    with pytest.raises(ValueError) as e:
        ImageCaptionFolderDataset(root)
    msg = str(e.value)
    assert "6 image(s) under" in msg and 'have no caption' in msg
    assert "'0.png', '1.png', '2.png', '4.png', '5.png' and 1 more" in msg
    assert "'3.png'" not in msg


def test_error_empty_dataset(tmp_path):
    (tmp_path / 'r').mkdir()
    (tmp_path / 'r' / 'readme.txt').write_text('no images')
    with pytest.raises(ValueError, match='empty dataset: no images'):
        ImageCaptionFolderDataset(tmp_path / 'r')
    path = tmp_path / 'c.json'
    path.write_text('[]')
    with pytest.raises(ValueError, match='empty dataset: captions file'):
        ImageCaptionFolderDataset(tmp_path / 'r', path)


def test_error_bad_args_and_corrupt_image(folder):
    path = write_captions(folder, 'jsonl')
    with pytest.raises(ValueError, match='resolution must be a positive'):
        ImageCaptionFolderDataset(folder, path, resolution=0)
    (folder / 'a.png').write_bytes(b'garbage')
    ds = ImageCaptionFolderDataset(folder, path)
    with pytest.raises(ValueError, match=r'cannot read image .*a\.png'):
        ds[0]
    with pytest.raises(IndexError):
        ds[3]


# ------------------------------------------------- registry / collate / model --


def test_registry_build_and_collate(folder):
    from mmagic.registry import DATASETS
    path = write_captions(folder, 'jsonl')
    ds = DATASETS.build(dict(type='ImageCaptionFolderDataset', root=str(folder),
                             captions=str(path), resolution=16, low_res=8))
    assert isinstance(ds, ImageCaptionFolderDataset)
    batch = default_collate([ds[i] for i in range(3)])
    assert batch['img'].shape == (3, 3, 16, 16)
    assert batch['img'].dtype == torch.float32
    assert batch['low_res'].shape == (3, 3, 8, 8)
    assert batch['prompt'] == list(EXPECTED.values())
    assert batch['file'] == list(EXPECTED)
    assert batch['index'].tolist() == [0, 1, 2]


def test_glide_training_step(folder):
    from mmagic.registry import MODELS
    from mmengine import Config

    import projects.glide  # noqa: F401  (registers the model)
    torch.manual_seed(0)
    cfg = Config.fromfile(
        str(ROOT / 'projects/glide/configs/glide_tiny_shapes-64x64.py'))
    model = MODELS.build(cfg.model)
    path = write_captions(folder, 'jsonl')
    ds = ImageCaptionFolderDataset(folder, path, resolution=64,
                                   random_flip=True)
    batch = default_collate([ds[0], ds[1]])
    losses = model.loss(batch)
    assert set(losses) >= {'loss_mse', 'loss_vb'}
    for v in losses.values():
        assert torch.isfinite(v).all()
    sum(losses.values()).backward()
