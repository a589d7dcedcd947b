"""Train or fine-tune a GLIDE model with the mmengine Runner.

    python tools/train.py CONFIG [--work-dir DIR]
                          [--resume [CKPT] | --init-from CKPT [--init-rename OLD=NEW ...]
                                              [--init-zero PART ...]]
                          [--amp] [--cfg-options KEY=VALUE ...] [--launcher pytorch]

``--resume`` without a path resumes from the latest checkpoint in the work
dir; a damaged one (empty or truncated, e.g. by a run killed while writing
it) is skipped with a warning naming it, for the newest intact one before it.
A ``--resume``/``--init-from`` file that is not a checkpoint is an error.

``--init-from`` starts a new run (new optimiser, iteration 0) from the weights
of a checkpoint: a training checkpoint (whose ``state_dict`` holds the EMA
weights) or published weights. Parameters the config's model has and the
checkpoint lacks, e.g. blocks added since, keep their initial values and are
listed; any other mismatch is an error. ``--init-rename OLD=NEW`` first
renames the checkpoint keys that start with ``OLD`` to start with ``NEW``, for
blocks that moved: adding attention at a resolution inserts it before that
level's upsampler, e.g. ``unet.out_blocks.5.1.=unet.out_blocks.5.2.``.
``--init-zero PART`` starts the initialised parameters whose keys contain
``PART`` at zero: residual blocks added with zero output projections (text
transformer blocks with ``--init-zero .c_proj.``) add nothing at first, so
training starts from what the checkpoint draws. The completed weights are
written to ``WORK_DIR/init_from.pth`` and loaded through ``load_from``.

``--amp`` trains in bfloat16 autocast (``BF16AutocastOptimWrapper``) on
the GPU or the CPU (worth it on CPUs with AMX/AVX512-BF16), or in float16
with loss scaling on GPUs without bf16.
"""
import argparse
import glob
import os.path as osp
import re
import sys

from mmengine.config import Config, DictAction

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a GLIDE model')
    parser.add_argument('config', help='config file')
    parser.add_argument('--work-dir', help='where logs and checkpoints go')
    start = parser.add_mutually_exclusive_group()
    start.add_argument('--resume', nargs='?', const='auto', default=None,
                       help='resume from CKPT, or from the latest checkpoint of the work dir')
    start.add_argument('--init-from', metavar='CKPT',
                       help='start a new run from the weights of CKPT; parameters CKPT lacks keep '
                            'their initial values')
    parser.add_argument('--init-rename', nargs='+', metavar='OLD=NEW', default=[],
                        help='with --init-from: rename the checkpoint keys starting with OLD to start with NEW')
    parser.add_argument('--init-zero', nargs='+', metavar='PART', default=[],
                        help='with --init-from: start the initialised parameters whose keys contain PART at zero')
    parser.add_argument('--amp', action='store_true',
                        help='mixed precision: bf16 autocast (CPU or GPU), fp16 on GPUs without bf16')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. train_cfg.max_iters=100')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser.parse_args(argv)


def latest_intact_checkpoint(work_dir: str):
    """The checkpoint ``--resume`` resumes from: the one ``work_dir/last_checkpoint``
    names, else the newest ``iter_N.pth``/``epoch_N.pth``, skipping (with a
    warning naming each) damaged files; None when the work dir has none.

    Raises:
        RuntimeError: every checkpoint in the work dir is damaged.
    """
    from projects.glide.checkpoint import check_checkpoint_file
    found = glob.glob(osp.join(glob.escape(work_dir), '*.pth'))
    numbered = [p for p in found if re.fullmatch(r'(iter|epoch)_\d+\.pth', osp.basename(p))]
    candidates = sorted(numbered, key=lambda p: int(re.findall(r'\d+', osp.basename(p))[0]), reverse=True)
    pointer = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(pointer):
        with open(pointer) as f:
            last = f.read().strip()
        if last:
            candidates = [last] + [p for p in candidates if osp.abspath(p) != osp.abspath(last)]
    broken = []
    for path in candidates:
        try:
            check_checkpoint_file(path)
        except (OSError, RuntimeError) as err:
            print(f'warning: --resume skips {path}: {err}', file=sys.stderr)
            broken.append(path)
            continue
        return path
    if broken:
        raise RuntimeError(f'no intact checkpoint to resume from in {work_dir}: {", ".join(broken)} are damaged')
    return None


def rename_prefixes(weights: dict, renames: dict) -> dict:
    """``weights`` with each key starting with an ``OLD`` of ``renames``
    (``{OLD: NEW}``) starting with ``NEW`` instead.

    Raises:
        KeyError: an ``OLD`` starts no key (a typo would otherwise leave the
            block to be re-initialised without a word), or a renamed key
            would replace another.
    """
    unused = [old for old in renames if not any(k.startswith(old) for k in weights)]
    if unused:
        raise KeyError(f'--init-rename: no checkpoint key starts with {", ".join(unused)}')
    renamed = {}
    for key, value in weights.items():
        old = next((o for o in renames if key.startswith(o)), None)
        renamed[key if old is None else renames[old] + key[len(old):]] = value
    if len(renamed) != len(weights):
        raise KeyError('--init-rename: renamed keys would replace other keys of the checkpoint')
    return renamed


def complete_checkpoint(cfg, path: str, renames: dict = None, zero: tuple = ()) -> str:
    """Write the weights of ``path`` (keys renamed by :func:`rename_prefixes`),
    completed with the initial values of the parameters it lacks (zeros for
    those whose keys contain a part of ``zero``), to
    ``WORK_DIR/init_from.pth``; return that path.

    Raises:
        KeyError: a part of ``zero`` is in no initialised key (the
            checkpoint's own weights are never zeroed).
    """
    import os

    import torch
    from mmagic.registry import MODELS

    import projects.glide  # noqa: F401  (registers the models)
    from projects.glide.checkpoint import complete_state_dict, load_checkpoint_file
    from projects.glide.fileio import atomic_save
    ckpt = load_checkpoint_file(path, map_location='cpu')
    weights = rename_prefixes(ckpt.get('state_dict', ckpt), renames or {})
    model_state = MODELS.build(cfg.model).state_dict()
    completed, added = complete_state_dict(model_state, weights)
    unused = [part for part in zero if not any(part in k for k in added)]
    if unused:
        raise KeyError(f'--init-zero: no initialised key contains {", ".join(unused)}')
    zeroed = [k for k in added if any(part in k for part in zero)]
    completed.update({k: torch.zeros_like(completed[k]) for k in zeroed})
    completed = {k: v.to(model_state[k].dtype) for k, v in completed.items()}
    print(f'--init-from {path}: {len(completed) - len(added)} tensors loaded, '
          f'{len(added)} initialised' + (f': {", ".join(added)}' if added else '')
          + (f'; {len(zeroed)} of them at zero' if zero else ''))
    os.makedirs(cfg.work_dir, exist_ok=True)
    out = osp.join(cfg.work_dir, 'init_from.pth')  # every process of a launch writes the same file
    meta = dict(init_from=path, initialised=added, **(dict(renamed=renames) if renames else {}),
                **(dict(zeroed=zeroed) if zero else {}))
    atomic_save(dict(state_dict=completed, meta=meta), out)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if not osp.isfile(args.config):
        print(f'error: config file not found: {args.config}', file=sys.stderr)
        return 1
    import torch
    from mmengine.runner import Runner

    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or osp.join(
        'work_dirs', osp.splitext(osp.basename(args.config))[0])
    if args.amp:
        if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            cfg.optim_wrapper.type = 'AmpOptimWrapper'  # fp16 with loss scaling
            cfg.optim_wrapper.dtype = 'float16'
        else:
            cfg.optim_wrapper.type = 'BF16AutocastOptimWrapper'
    from projects.glide.engine.cli_checks import UsageError, check_checkpoint
    try:
        if args.resume == 'auto':
            cfg.resume, cfg.load_from = True, latest_intact_checkpoint(cfg.work_dir)
        elif args.resume:
            cfg.resume, cfg.load_from = True, check_checkpoint(args.resume)
    except (UsageError, RuntimeError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    for option, value in (('--init-rename', args.init_rename), ('--init-zero', args.init_zero)):
        if value and not args.init_from:
            print(f'error: {option} needs --init-from', file=sys.stderr)
            return 1
    bad = [r for r in args.init_rename if '=' not in r or r.startswith('=')]
    if bad:
        print(f'error: --init-rename takes OLD=NEW key prefixes, got {" ".join(bad)}', file=sys.stderr)
        return 1
    renames = dict(r.split('=', 1) for r in args.init_rename)
    if args.init_from:
        from projects.glide.checkpoint import CheckpointMismatchError
        try:
            cfg.resume, cfg.load_from = False, complete_checkpoint(cfg, args.init_from, renames,
                                                                   args.init_zero)
        except (FileNotFoundError, KeyError, RuntimeError) as err:
            kind = 'does not fit the config' if isinstance(err, CheckpointMismatchError) else 'cannot be used'
            message = err.args[0] if isinstance(err, KeyError) else err
            print(f'error: --init-from {args.init_from} {kind}: {message}', file=sys.stderr)
            return 1
    from projects.glide.engine.devices import DeviceError, setup_cpu_distributed
    try:
        setup_cpu_distributed(cfg, args.launcher)
    except DeviceError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    from projects.glide.checkpoint import CheckpointMismatchError, NonFiniteCheckpointError
    runner = Runner.from_cfg(cfg)
    try:
        runner.train()  # loads or resumes the checkpoint first
    except (CheckpointMismatchError, NonFiniteCheckpointError) as err:
        print(f'error: checkpoint {cfg.load_from} cannot be used: {err}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
