"""Test a GLIDE model with the mmengine Runner: generate, save, score.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--prompts FILE]
                         [--out-dir DIR] [--cfg-options KEY=VALUE ...]
                         [--launcher none|pytorch]

Runs the config's test loop (``Runner.from_cfg(cfg).test()``) with
``CHECKPOINT`` loaded. ``--prompts FILE`` (``.txt``: one caption per line;
``.json``: a list of captions or of ``{"prompt": ..., "seed": ...}``)
replaces the config's test set by those captions, one image each, seed =
the item's index unless given (configs without a test section get a default
one and no metrics).

Outputs: every image as ``OUT_DIR/{index:05d}_{prompt-slug}.png`` (prompt,
seed and index in the PNG text metadata), ``OUT_DIR/grid.png`` with the
prompts under the images (``OUT_DIR`` defaults to ``WORK_DIR/images``), and
the test evaluator's metrics in ``WORK_DIR/metrics.json`` (``WORK_DIR``
defaults to ``work_dirs/CONFIG_NAME``). Images a previous run left in
``OUT_DIR`` under those names are deleted first (other files are kept);
every file is written atomically.

Several processes: ``bash tools/dist_test.sh CONFIG CHECKPOINT NPROC [args]``
(each image is saved exactly once; see ``GlideImageSaverHook``).

Bad input (missing config/checkpoint/prompt file, a file that is not a
checkpoint, empty prompt file,
unwritable output dirs, CUDA asked for without a GPU) stops the run before
anything is written, with one ``error:`` line on stderr and exit status 1.
"""
import argparse
import json
import os
import os.path as osp
import sys

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from mmengine.config import Config, DictAction  # noqa: E402

from projects.glide.engine.cli_checks import (  # noqa: E402
    UsageError,
    check_checkpoint,
    check_file,
    check_writable_dir,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Generate and score the test set of a GLIDE config')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='where logs and metrics.json go '
                        '(default: work_dirs/CONFIG_NAME)')
    parser.add_argument('--prompts', help='.txt (one caption per line) or .json '
                        'prompt file replacing the config\'s test set')
    parser.add_argument('--out-dir', help='where the PNGs and grid.png go '
                        '(default: WORK_DIR/images)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. '
                        'model.test_cfg.num_inference_steps=25')
    parser.add_argument('--launcher', choices=['none', 'pytorch'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser.parse_args(argv)


def _is_main() -> bool:
    return int(os.environ.get('RANK', '0')) == 0


def error(msg: str) -> int:
    if _is_main():
        print(f'error: {msg}', file=sys.stderr, flush=True)
    return 1


def prepare_config(args) -> Config:
    """Check every input and build the Runner config; writes nothing."""
    from projects.glide.engine.devices import check_cuda_requests, check_launcher
    config = check_file(args.config, 'config file')
    checkpoint = check_checkpoint(args.checkpoint)
    check_cuda_requests(args.cfg_options)
    prompt_file = None
    if args.prompts is not None:
        from projects.glide.datasets.prompt_set import load_prompt_file
        try:
            load_prompt_file(args.prompts)
        except (OSError, ValueError) as err:
            raise UsageError(str(err)) from None
        prompt_file = osp.abspath(args.prompts)
    try:
        cfg = Config.fromfile(config)
    except Exception as err:  # syntax errors, failed custom imports...
        raise UsageError(f'cannot load config {config}: '
                         f'{type(err).__name__}: {err}') from None
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    check_launcher(cfg, args.launcher)

    if prompt_file is not None:
        if cfg.get('test_dataloader') is None:
            cfg.test_dataloader = dict(
                batch_size=4, num_workers=0,
                sampler=dict(type='DefaultSampler', shuffle=False),
                collate_fn=dict(type='default_collate'))
            cfg.test_cfg = cfg.get('test_cfg') or dict(type='TestLoop')
            cfg.test_evaluator = cfg.get('test_evaluator') or []
        cfg.test_dataloader.dataset = dict(
            type='PromptSetDataset', prompt_file=prompt_file)
    elif cfg.get('test_dataloader') is None:
        raise UsageError(f'config {config} has no test_dataloader: give the '
                         'captions with --prompts FILE')
    if cfg.get('test_cfg') is None:
        cfg.test_cfg = dict(type='TestLoop')
    if 'timer' not in (cfg.get('default_hooks') or {}):
        # the runner's default timer in the mmagic scope is mmagic's, which reads `test_loop.total_length` (only
        # mmagic's loops have it) and stops a TestLoop at its 10th batch; the trainable configs name mmengine's
        cfg.default_hooks = dict(cfg.get('default_hooks') or {}, timer=dict(type='mmengine.IterTimerHook'))
    if cfg.get('test_evaluator') is None:
        cfg.test_evaluator = []

    cfg.work_dir = check_writable_dir(
        args.work_dir or cfg.get('work_dir') or osp.join(
            'work_dirs', osp.splitext(osp.basename(config))[0]), 'work dir')
    out_dir = check_writable_dir(
        args.out_dir or osp.join(cfg.work_dir, 'images'), 'out dir')
    cfg.custom_hooks = list(cfg.get('custom_hooks') or []) + [
        dict(type='GlideImageSaverHook', out_dir=out_dir, clear_previous=True)
    ]
    cfg.load_from = checkpoint
    cfg.resume = False
    cfg.launcher = args.launcher
    cfg.glide_out_dir = out_dir
    return cfg


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, 'item') and getattr(value, 'ndim', 0) == 0:
        value = value.item()
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value)


def write_json(path: str, data) -> None:
    from projects.glide.fileio import atomic_write_text
    atomic_write_text(json.dumps(_jsonable(data), indent=2, sort_keys=True) + '\n', path)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = prepare_config(args)
    except UsageError as err:
        return error(str(err))
    except Exception as err:
        from projects.glide.engine.devices import DeviceError
        if isinstance(err, DeviceError):
            return error(str(err))
        raise

    from mmengine.runner import Runner

    from projects.glide.checkpoint import CheckpointMismatchError, NonFiniteCheckpointError
    from projects.glide.engine.devices import setup_cpu_distributed
    setup_cpu_distributed(cfg, args.launcher)
    out_dir = cfg.pop('glide_out_dir')

    runner = Runner.from_cfg(cfg)
    try:
        metrics = runner.test()
    except CheckpointMismatchError as err:
        details = str(err).split('\n', 1)[-1]
        return error(f'checkpoint {cfg.load_from} does not fit config '
                     f'{args.config}\n{details}')
    except NonFiniteCheckpointError as err:
        return error(f'{cfg.load_from}: {err}')
    except (FileNotFoundError, RuntimeError) as err:
        if 'checkpoint' not in str(err):
            raise
        return error(str(err))
    if runner.rank == 0:
        path = osp.join(cfg.work_dir, 'metrics.json')
        write_json(path, metrics or {})
        print(f'images: {out_dir}\nmetrics: {path}', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
