"""Strip a training checkpoint to the weights a user needs.

    python tools/model_converters/glide_publish.py WORK_DIR/iter_N.pth OUT.pth [--fp16]
        [--upsampler-from UP_WORK_DIR/iter_M.pth]

mmengine's ``EMAHook`` stores the EMA weights as ``state_dict`` (the raw
weights under ``ema_state_dict``); this keeps ``state_dict`` only, optionally
in fp16 (half the size; ``init_model`` casts back to the model's dtype), and
records the training iteration in ``meta``. ``--upsampler-from`` takes the
``unet_up.*`` weights from an upsampler run, making one cascade file.

The output may not be an input (it would replace the training checkpoint)
and is written atomically (a temporary file renamed into place). A file that
is not a checkpoint, or holds no GLIDE weights, is an error.
"""
import argparse
import os.path as osp
import sys

# runnable from a checkout without installing it, like the other tools
REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

#: the key prefixes of a GLIDE model's weights (``Glide.state_dict()``)
GLIDE_PREFIXES = ('unet.', 'unet_up.', 'clip.')


def glide_weights(path: str) -> tuple:
    """(weights, meta) of the checkpoint ``path``: its ``state_dict`` (the EMA
    weights of a training checkpoint) and ``meta``.

    Raises:
        ValueError: the file holds no GLIDE weights (no ``unet.``/``unet_up.``
            keys: another model's checkpoint, or openai's layout).
    """
    from projects.glide.checkpoint import load_checkpoint_file
    from projects.glide.convert import unwrap_state_dict
    ckpt = load_checkpoint_file(path, 'cpu')
    try:
        weights = dict(unwrap_state_dict(ckpt))
    except (KeyError, TypeError, ValueError, AttributeError):
        weights = {}
    if not any(k.startswith(GLIDE_PREFIXES[:2]) for k in weights):
        hint = (' (openai\'s key layout: convert it with glide_openai_to_mmagic.py)'
                if any(k.startswith('input_blocks.') for k in weights) else '')
        raise ValueError(f'no GLIDE weights found in {path}: no unet.* or unet_up.* keys{hint}')
    meta = ckpt.get('meta', {}) if isinstance(ckpt, dict) else {}
    return weights, meta if isinstance(meta, dict) else {}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('checkpoint', help='training checkpoint (mmengine Runner)')
    parser.add_argument('out', help='output file (never one of the inputs; written atomically)')
    parser.add_argument('--fp16', action='store_true', help='store floating tensors in fp16')
    parser.add_argument('--upsampler-from', help='take unet_up.* from this checkpoint')
    args = parser.parse_args(argv)
    from projects.glide.engine.cli_checks import UsageError, check_checkpoint, check_output_file
    from projects.glide.fileio import atomic_save
    try:
        check_checkpoint(args.checkpoint)
        if args.upsampler_from:
            check_checkpoint(args.upsampler_from, '--upsampler-from checkpoint file')
        out = check_output_file(args.out, 'output file', (args.checkpoint, args.upsampler_from))
        state_dict, ckpt_meta = glide_weights(args.checkpoint)
        meta = dict(iter=ckpt_meta.get('iter'))
        if args.upsampler_from:
            up, up_meta = glide_weights(args.upsampler_from)
            up = {k: v for k, v in up.items() if k.startswith('unet_up.')}
            if not up:
                raise ValueError(f'--upsampler-from {args.upsampler_from} holds no upsampler weights '
                                 '(unet_up.*): pass an upsampler run\'s checkpoint')
            state_dict.update(up)
            # a published cascade names its upsampler's iteration
            meta['upsampler_iter'] = up_meta.get('upsampler_iter', up_meta.get('iter'))
    except (UsageError, OSError, RuntimeError, ValueError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    if args.fp16:
        state_dict = {k: v.half() if v.is_floating_point() else v for k, v in state_dict.items()}
    atomic_save(dict(state_dict=state_dict, meta=meta), out)
    print(f'wrote {args.out} ({len(state_dict)} tensors, meta {meta})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
