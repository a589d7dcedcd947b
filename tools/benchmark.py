"""Benchmark the GLIDE cascade on random-initialised models (no weights needed).

    python tools/benchmark.py [--config C] [--device cuda|cpu] [--batch-size 16] [--steps 100]
        [--steps-up fast27] [--guidance-scale 3] [--sampler ddim]
        [--variants fp32,fp16,bf16,fp16+cl,bf16+cl] [--repeats 1]

Default workload: the mmagic quick start (16 prompts, 100 guided DDIM base
steps at 64x64, i.e. 32-image UNet batches, then 27 upsampler steps at
256x256) on the full-size cascade config. Every variant runs in the same
process on the same machine; the first (``fp32``, eager) is the baseline.
A variant is a dtype (``fp32``, ``fp16``, ``bf16``), optionally with ``+cl``
for channels-last (NHWC) weights and inputs.
Prints one JSON line per variant: seconds per stage and in total, UNet calls
and ms per call per stage, images/s, peak GPU memory, FLOPs per stage
(``torch.utils.flop_counter``, 2 per multiply-add) and the achieved TFLOP/s,
and ``speedup`` against the baseline. With ``--config`` pointing at a tiny
config it runs on a CPU in seconds (that is how the tests run it).
"""
import argparse
import json
import os.path as osp
import sys
import time

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEFAULT_CONFIG = osp.join(REPO_ROOT, 'projects', 'glide', 'configs',
                          'glide_ddim-classifier-free_laion-64-256.py')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--config', default=DEFAULT_CONFIG, help='model config (random weights)')
    parser.add_argument('--device', default=None, help='cuda or cpu (default: cuda if available)')
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--steps', default='100', help='base steps (int or respacing spec)')
    parser.add_argument('--steps-up', default='fast27', help='upsampler steps')
    parser.add_argument('--guidance-scale', type=float, default=3.)
    parser.add_argument('--sampler', default='ddim', help='ddim, ddpm or dpmsolver++')
    parser.add_argument('--variants', default='fp32,fp16,bf16,fp16+cl,bf16+cl',
                        help='comma-separated DTYPE[+cl]; the first is the baseline')
    parser.add_argument('--repeats', type=int, default=1, help='timed runs per variant (best kept)')
    return parser.parse_args(argv)


def _steps(text):
    return int(text) if str(text).isdigit() else text


def _sync(device):
    import torch
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _count_flops(unet, x, t, text_emb, cond):
    """FLOPs of one UNet call (conv/matmul/bmm, 2 per multiply-add)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(x, t, text_emb=text_emb, **cond)
    return counter.get_total_flops()


def parse_variant(text):
    """``'bf16+cl'`` -> ``('bf16', 'channels_last')``; None if malformed."""
    dtype, _, layout = text.partition('+')
    layouts = {'': 'contiguous', 'cl': 'channels_last'}
    if dtype not in ('fp32', 'fp16', 'bf16') or layout not in layouts:
        return None
    return dtype, layouts[layout]


def run_variant(model, variant, args, device):
    """Time both stages of one variant; returns the JSON record."""
    import torch
    dtype, layout = variant
    model.set_dtype(dtype)
    model.set_memory_format(layout)
    prompts = [f'prompt number {i}' for i in range(args.batch_size)]
    calls = {'base': 0, 'up': 0}
    originals = {}
    for stage, unet in (('base', model.unet), ('up', model.unet_up)):
        if unet is None:
            continue
        originals[stage] = unet.forward

        def counted(*a, _stage=stage, **k):
            calls[_stage] += 1
            return originals[_stage](*a, **k)

        unet.forward = counted
    best = None
    try:
        for _ in range(max(1, args.repeats)):
            calls.update(base=0, up=0)
            if device.type == 'cuda':
                torch.cuda.reset_peak_memory_stats(device)
            upsampler, model.unet_up = model.unet_up, None
            _sync(device)
            t0 = time.perf_counter()
            try:
                low = model.infer(prompt=prompts, batch_size=args.batch_size,
                                  guidance_scale=args.guidance_scale,
                                  num_inference_steps=_steps(args.steps), sampler=args.sampler,
                                  seed=0)['samples']
            finally:
                model.unet_up = upsampler
            _sync(device)
            t1 = time.perf_counter()
            if model.unet_up is not None:
                model.infer_up(low, prompt=prompts, num_inference_steps=_steps(args.steps_up),
                               seed=0)
            _sync(device)
            t2 = time.perf_counter()
            run = dict(base_s=t1 - t0, up_s=t2 - t1, calls=dict(calls))
            if best is None or run['base_s'] + run['up_s'] < best['base_s'] + best['up_s']:
                best = run
    finally:
        for stage, fn in originals.items():
            unet = model.unet if stage == 'base' else model.unet_up
            unet.forward = fn
    flops = _stage_flops(model, args, device)
    total = best['base_s'] + best['up_s']
    record = dict(
        variant=f'{dtype}-eager' if layout == 'contiguous' else f'{dtype}-{layout}-eager',
        dtype=dtype, memory_format=layout, device=str(device),
        gpu=torch.cuda.get_device_name(device) if device.type == 'cuda' else None,
        torch=torch.__version__, batch_size=args.batch_size, steps=str(args.steps),
        steps_up=str(args.steps_up) if model.unet_up is not None else None, sampler=args.sampler,
        base_s=round(best['base_s'], 4), up_s=round(best['up_s'], 4), total_s=round(total, 4),
        base_calls=best['calls']['base'], up_calls=best['calls']['up'],
        base_ms_per_call=round(1e3 * best['base_s'] / max(1, best['calls']['base']), 3),
        up_ms_per_call=(round(1e3 * best['up_s'] / best['calls']['up'], 3)
                        if best['calls']['up'] else None),
        images_per_s=round(args.batch_size / total, 4),
        peak_gpu_mem_gib=(round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
                          if device.type == 'cuda' else None),
        base_flops=flops['base'] * best['calls']['base'],
        up_flops=flops['up'] * best['calls']['up'],
    )
    record['tflops_per_s'] = round((record['base_flops'] + record['up_flops']) / total / 1e12, 4)
    return record


def _stage_flops(model, args, device):
    """FLOPs of one base call (the guided batch) and one upsampler call."""
    import torch
    b = args.batch_size
    rows = b if args.guidance_scale == 1 else 2 * b
    flops = {'base': 0, 'up': 0}
    tokens, mask = model.tokenizer([''] * rows, device=device)
    size = model.unet.image_size
    with torch.no_grad():
        emb = model.unet.encode_text(tokens, mask)
        x = torch.zeros(rows, 3, size, size, device=device)
        flops['base'] = _count_flops(model.unet, x, torch.zeros(rows, device=device, dtype=torch.long),
                                     emb, {})
        if model.unet_up is not None:
            up = model.unet_up.image_size
            tokens, mask = model.tokenizer([''] * b, device=device)
            emb = model.unet_up.encode_text(tokens, mask)
            flops['up'] = _count_flops(
                model.unet_up, torch.zeros(b, 3, up, up, device=device),
                torch.zeros(b, device=device, dtype=torch.long), emb,
                dict(low_res=torch.zeros(b, 3, size, size, device=device)))
    return flops


def main(argv=None) -> int:
    args = parse_args(argv)
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)
    import torch

    from projects.glide.engine.cli_checks import UsageError, check_file
    from projects.glide.engine.devices import DeviceError, check_device
    try:
        check_file(args.config, 'config file')
        device = torch.device(check_device(args.device or ('cuda' if torch.cuda.is_available()
                                                             else 'cpu')))
        names = [v.strip() for v in args.variants.split(',') if v.strip()]
        variants = [parse_variant(v) for v in names]
        if not variants or None in variants:
            raise UsageError('--variants must list DTYPE or DTYPE+cl with DTYPE fp32, fp16 or '
                             f'bf16, got {args.variants!r}')
        if args.batch_size < 1:
            raise UsageError(f'--batch-size must be positive, got {args.batch_size}')
    except (UsageError, DeviceError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    from mmagic.registry import MODELS
    from mmengine import Config
    from mmengine.registry import init_default_scope

    import projects.glide  # noqa: F401
    init_default_scope('mmagic')
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(args.config).model).to(device).eval()
    baseline = None
    for variant in variants:
        record = run_variant(model, variant, args, device)
        baseline = baseline or record['total_s']
        record['speedup'] = round(baseline / record['total_s'], 3)
        print(json.dumps(record), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
