"""Convert openai's GLIDE checkpoints to this project's (mmagic) layout.

    python tools/model_converters/glide_openai_to_mmagic.py --base base.pt \
        [--upsample upsample.pt] [--clip-image image-enc.pt --clip-text text-enc.pt] \
        --out glide.pth [--config-out glide_config.py]

Accepts openai's released ``base.pt``/``upsample.pt`` (and the inpainting
files), as plain state dicts or dicts holding ``state_dict`` (and
``options``), and the noise-aware CLIP of CLIP guidance: openai's two
released files (``--clip-image``, ``--clip-text``) or one file holding
``image_encoder``, ``text_encoder`` and optionally ``config`` (``--clip``).
The architecture is inferred from tensor shapes; ``--config-out`` writes a
config that ``mmagic.apis.init_model`` loads the output with (with a CLIP,
``model.clip`` is the ``NoisedCLIP`` config).
"""
import argparse
import os.path as osp
import sys

# runnable from a checkout without installing it, like the other tools
REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--base', required=True, help="openai base model file (base.pt)")
    parser.add_argument('--upsample', help="openai upsampler file (upsample.pt)")
    parser.add_argument('--clip', help='noise-aware CLIP: one file with image_encoder, text_encoder '
                        '(openai layout) and optionally config')
    parser.add_argument('--clip-image', help="openai's CLIP image encoder file (clip/image-enc)")
    parser.add_argument('--clip-text', help="openai's CLIP text encoder file (clip/text-enc)")
    parser.add_argument('--out', required=True, help='output checkpoint (.pth)')
    parser.add_argument('--config-out', help='also write a config for the converted checkpoint')
    return parser.parse_args(argv)


def load_clip(args):
    """The CLIP dict of ``--clip`` or of ``--clip-image`` + ``--clip-text`` (None without)."""
    from projects.glide.checkpoint import load_checkpoint_file
    if args.clip and (args.clip_image or args.clip_text):
        raise ValueError('pass either --clip or --clip-image with --clip-text, not both')
    if bool(args.clip_image) != bool(args.clip_text):
        raise ValueError('--clip-image and --clip-text must be given together')
    if args.clip:
        return load_checkpoint_file(args.clip, 'cpu')
    if args.clip_image:
        return dict(image_encoder=load_checkpoint_file(args.clip_image, 'cpu'),
                    text_encoder=load_checkpoint_file(args.clip_text, 'cpu'))
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    from projects.glide.checkpoint import load_checkpoint_file
    from projects.glide.convert import check_openai_unet, config_text, convert_openai_checkpoint
    from projects.glide.engine.cli_checks import UsageError, check_checkpoint, check_output_file
    from projects.glide.fileio import atomic_save, atomic_write_text
    inputs = [('--base', args.base), ('--upsample', args.upsample), ('--clip', args.clip),
              ('--clip-image', args.clip_image), ('--clip-text', args.clip_text)]
    try:
        for flag, path in inputs:
            if path:
                check_checkpoint(path, f'{flag} checkpoint file')
        sources = [path for _, path in inputs]
        out = check_output_file(args.out, '--out', sources)
        config_out = args.config_out and check_output_file(args.config_out, '--config-out', sources)
        if config_out == out:
            raise UsageError(f'--out and --config-out are the same file: {out}')
        base = load_checkpoint_file(args.base, 'cpu')
        check_openai_unet(base, f'--base {args.base}')
        upsample = load_checkpoint_file(args.upsample, 'cpu') if args.upsample else None
        if upsample is not None:
            check_openai_unet(upsample, f'--upsample {args.upsample}')
        state_dict, model = convert_openai_checkpoint(base, upsample, load_clip(args))
    except (UsageError, OSError, RuntimeError, ValueError, KeyError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    atomic_save(dict(state_dict=state_dict, meta=dict(converted_from='openai glide-text2im')), out)
    print(f'wrote {args.out} ({len(state_dict)} tensors)')
    if config_out:
        atomic_write_text(config_text(model), config_out)
        print(f'wrote {args.config_out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
