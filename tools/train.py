"""Train or fine-tune a GLIDE model with the mmengine Runner.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
                          [--cfg-options KEY=VALUE ...] [--launcher pytorch]

``--resume`` without a path resumes from the latest checkpoint in the work
dir. ``--amp`` trains in bfloat16 autocast (``BF16AutocastOptimWrapper``) on
the GPU or the CPU (worth it on CPUs with AMX/AVX512-BF16), or in float16
with loss scaling on GPUs without bf16.
"""
import argparse
import os.path as osp
import sys

from mmengine.config import Config, DictAction

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a GLIDE model')
    parser.add_argument('config', help='config file')
    parser.add_argument('--work-dir', help='where logs and checkpoints go')
    parser.add_argument('--resume', nargs='?', const='auto', default=None,
                        help='resume from CKPT, or from the latest checkpoint of the work dir')
    parser.add_argument('--amp', action='store_true', help='mixed precision: bf16 autocast (CPU or GPU), fp16 on GPUs without bf16')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. train_cfg.max_iters=100')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser.parse_args(argv)


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
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume:
        if not osp.isfile(args.resume):
            print(f'error: checkpoint not found: {args.resume}', file=sys.stderr)
            return 1
        cfg.resume, cfg.load_from = True, args.resume
    from projects.glide.engine.devices import DeviceError, setup_cpu_distributed
    try:
        setup_cpu_distributed(cfg, args.launcher)
    except DeviceError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    runner = Runner.from_cfg(cfg)
    runner.train()
    return 0


if __name__ == '__main__':
    sys.exit(main())
