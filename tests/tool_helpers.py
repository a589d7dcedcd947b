"""What the command-line tool tests share: paths, the tiny configs, a
subprocess runner (as a user would run a tool) and an in-process one."""
import importlib.util
import os
import os.path as osp
import re
import socket
import subprocess

from PIL import Image

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = osp.join(REPO, 'projects', 'glide', 'configs')
BASE_CFG = osp.join(CONFIGS, 'glide_tiny_shapes-64x64.py')
CASCADE_CFG = osp.join(CONFIGS, 'glide_tiny_shapes-64-256.py')
FAST = ['model.test_cfg.num_inference_steps=2', 'test_dataloader.batch_size=2',
        'test_dataloader.num_workers=0']
PROMPTS = [
    'a red circle on a blue background',
    'A green triangle at the top, white background.',  # held out
    'hello world',  # outside the shapes grammar
    'a yellow square below a red circle on a black background',  # held out
    'a small blue square on the left against an orange background',
]
PNG_RE = re.compile(r'^(\d{5})_([a-z0-9-]+)\.png$')


def env():
    e = dict(os.environ)
    e['PYTHONPATH'] = REPO + (os.pathsep + e['PYTHONPATH'] if e.get('PYTHONPATH') else '')
    e.setdefault('OMP_NUM_THREADS', '2')
    return e


def run(args, cwd, timeout=240, extra_env=None):
    e = env()
    e.update(extra_env or {})
    return subprocess.run(args, cwd=cwd, env=e, capture_output=True, text=True,
                          timeout=timeout)


def tool(name):
    return osp.join(REPO, 'tools', name)


def load_tool(name):
    """Import tools/NAME.py as a module (for the fast in-process error paths)."""
    spec = importlib.util.spec_from_file_location(f'glide_tool_{name}', tool(f'{name}.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def saved_pngs(out_dir):
    return sorted(f for f in os.listdir(out_dir) if PNG_RE.match(f))


def png_meta(path):
    with Image.open(path) as im:
        im.load()
        return dict(im.text)


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def fails(mod, argv, capsys, match):
    """Run ``mod.main(argv)`` in-process: it must fail with one ``error: `` line matching ``match``."""
    rc = mod.main(argv)
    err = capsys.readouterr().err
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), err
    assert re.search(match, lines[0]), lines[0]
    return lines[0]
