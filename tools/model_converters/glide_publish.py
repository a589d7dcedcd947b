"""Strip a training checkpoint to the weights a user needs.

    python tools/model_converters/glide_publish.py WORK_DIR/iter_N.pth OUT.pth [--fp16]
        [--upsampler-from UP_WORK_DIR/iter_M.pth]

mmengine's ``EMAHook`` stores the EMA weights as ``state_dict`` (the raw
weights under ``ema_state_dict``); this keeps ``state_dict`` only, optionally
in fp16 (half the size; ``init_model`` casts back to the model's dtype), and
records the training iteration in ``meta``. ``--upsampler-from`` takes the
``unet_up.*`` weights from an upsampler run, making one cascade file.
"""
import argparse
import os.path as osp
import sys

import torch

# runnable from a checkout without installing it, like the other tools
REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('checkpoint', help='training checkpoint (mmengine Runner)')
    parser.add_argument('out', help='output file')
    parser.add_argument('--fp16', action='store_true', help='store floating tensors in fp16')
    parser.add_argument('--upsampler-from', help='take unet_up.* from this checkpoint')
    args = parser.parse_args(argv)
    from projects.glide.checkpoint import load_checkpoint_file
    from projects.glide.convert import unwrap_state_dict
    try:
        ckpt = load_checkpoint_file(args.checkpoint, 'cpu')
        state_dict = dict(unwrap_state_dict(ckpt))
        meta = dict(iter=ckpt.get('meta', {}).get('iter'))
        if args.upsampler_from:
            up = load_checkpoint_file(args.upsampler_from, 'cpu')
            state_dict.update({k: v for k, v in unwrap_state_dict(up).items()
                               if k.startswith('unet_up.')})
            up_meta = up.get('meta', {})  # a published cascade names its upsampler's iteration
            meta['upsampler_iter'] = up_meta.get('upsampler_iter', up_meta.get('iter'))
    except (OSError, RuntimeError, ValueError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    if args.fp16:
        state_dict = {k: v.half() if v.is_floating_point() else v for k, v in state_dict.items()}
    torch.save(dict(state_dict=state_dict, meta=meta), args.out)
    print(f'wrote {args.out} ({len(state_dict)} tensors, meta {meta})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
