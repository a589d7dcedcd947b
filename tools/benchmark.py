"""Benchmark the GLIDE cascade on random-initialised models (no weights needed).

    python tools/benchmark.py [--config C] [--device cuda|cpu] [--batch-size 16] [--steps 100]
        [--steps-up fast27] [--guidance-scale 3] [--sampler ddim]
        [--variants fp32,fp16,bf16+cl,...] [--compile-mode M] [--repeats 1] [--markdown FILE]

Default workload: the mmagic quick start (16 prompts, 100 guided DDIM base
steps at 64x64, i.e. 32-image UNet batches, then 27 upsampler steps at
256x256) on the full-size cascade config. Every variant runs in the same
process on the same machine, in ``--repeats`` interleaved rounds (each
variant's median run is kept, so load changes hit every variant alike); the
first is the baseline (default: plain eager fp32). A variant is a dtype
(``fp32``, ``fp16``, ``bf16``) followed by any of ``+cl`` (channels-last
weights and inputs), ``+compile`` (``Glide.compile``: one static-shape graph
per stage, ``--compile-mode`` passed on; the first, untimed run compiles, its
time is ``compile_s``), ``+math`` (attention by the unfused maths instead of
the fused ``scaled_dot_product_attention``
kernels), ``+tN`` (N CPU threads) and ``+rN`` / ``+rall`` (N rows, or all
rows, per UNet call instead of the model's ``rows_per_call='auto'``: see
``Glide.set_rows_per_call``). Default variants: fp32, fp16, bf16 and
their ``+cl`` on a GPU; fp32, fp32+cl, fp32+math and, where the CPU has
bf16 instructions, bf16 and bf16+cl on a CPU.
Prints one JSON line per variant: seconds per stage and in total, UNet calls
and ms per call per stage, images/s, peak GPU memory, FLOPs per stage
(``torch.utils.flop_counter``, 2 per multiply-add) and the achieved TFLOP/s,
and ``speedup`` against the baseline; then a markdown table on stderr (and
in ``--markdown FILE``). With ``--config`` pointing at a tiny config it runs
on a CPU in seconds (that is how the tests run it). Bad arguments stop it
with one ``error:`` line before any work.
"""
import argparse
import contextlib
import json
import os.path as osp
import re
import sys
import time

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from projects.glide.engine.cli_checks import finite_float, positive_int, sampling_steps  # noqa: E402

DEFAULT_CONFIG = osp.join(REPO_ROOT, 'projects', 'glide', 'configs',
                          'glide_ddim-classifier-free_laion-64-256.py')
SAMPLERS = ('ddim', 'ddpm', 'dpmsolver++', 'dpmsolver++-sde')
VARIANT_HELP = ('--variants must list DTYPE or DTYPE+cl with DTYPE fp32, fp16 or bf16, got {!r} '
                '(each variant: DTYPE[+cl][+compile][+math][+tN][+rN|+rall])')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--config', default=DEFAULT_CONFIG, help='model config (random weights)')
    parser.add_argument('--device', default=None, help='cuda or cpu (default: cuda if available)')
    parser.add_argument('--batch-size', type=positive_int, default=16)
    parser.add_argument('--steps', type=sampling_steps, default=100, help='base steps (int or respacing spec)')
    parser.add_argument('--steps-up', type=sampling_steps, default='fast27', help='upsampler steps')
    parser.add_argument('--guidance-scale', type=finite_float, default=3.)
    parser.add_argument('--sampler', default='ddim', choices=SAMPLERS, help='base stage sampler')
    parser.add_argument('--variants', default=None,
                        help='comma-separated DTYPE[+cl][+compile][+math][+tN][+rN|+rall]; the first is the '
                        'baseline')
    parser.add_argument('--compile-mode', default=None,
                        help="torch.compile mode of +compile variants, e.g. 'reduce-overhead' (CUDA graphs)")
    parser.add_argument('--repeats', type=positive_int, default=1,
                        help='rounds of timed runs over all variants (the median run is kept)')
    parser.add_argument('--markdown', default=None, help='also write the markdown table to this file')
    return parser.parse_args(argv)


def parse_variant(text):
    """``'bf16+cl+t2+r8'`` -> dict(dtype='bf16', layout='channels_last', compile=False,
    math=False, threads=2, rows=8) (``rows``: 'auto' unless given, None for ``+rall``); None if malformed."""
    dtype, *options = text.split('+')
    variant = dict(dtype=dtype, layout='contiguous', compile=False, math=False, threads=None, rows='auto')
    if dtype not in ('fp32', 'fp16', 'bf16') or len(set(options)) != len(options):
        return None
    for option in options:
        if option == 'cl':
            variant['layout'] = 'channels_last'
        elif option in ('compile', 'math'):
            variant[option] = True
        elif re.fullmatch(r't[1-9]\d*', option) and variant['threads'] is None:
            variant['threads'] = int(option[1:])
        elif re.fullmatch(r'r([1-9]\d*|all)', option) and variant['rows'] == 'auto':
            variant['rows'] = None if option == 'rall' else int(option[1:])
        else:
            return None
    return variant


def parse_variants(text):
    """The variants of a ``--variants`` value; UsageError naming it if one is malformed."""
    from projects.glide.engine.cli_checks import UsageError
    variants = [parse_variant(v.strip()) for v in text.split(',') if v.strip()]
    if not variants or None in variants:
        raise UsageError(VARIANT_HELP.format(text))
    return variants


def report(records, table, markdown):
    """One JSON line per record on stdout, the markdown table on stderr and in ``markdown`` (a path
    or None)."""
    for record in records:
        print(json.dumps(record), flush=True)
    print(table, file=sys.stderr, end='')
    if markdown is not None:
        with open(markdown, 'w') as f:
            f.write(table)


def variant_name(v):
    """The record's ``variant``: e.g. ``fp32-eager``, ``bf16-channels_last-compile-t2``, ``fp32-eager-rowsall``."""
    parts = [v['dtype']] + (['channels_last'] if v['layout'] == 'channels_last' else [])
    parts += ['math'] if v['math'] else []
    parts += ['compile' if v['compile'] else 'eager']
    parts += [f"t{v['threads']}"] if v['threads'] else []
    return '-'.join(parts + ([] if v['rows'] == 'auto' else [f"rows{v['rows'] or 'all'}"]))


def default_variants(device):
    import torch
    if device.type == 'cuda':
        return 'fp32,fp16,bf16,fp16+cl,bf16+cl'
    bf16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return 'fp32,fp32+cl,fp32+math' + (',bf16,bf16+cl' if bf16 else '')


def _sync(device):
    import torch
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _counted_calls(model, calls):
    """Count each stage's UNet rows (outside any compiled region; ``time_variant`` turns them into calls)."""
    wrapped = []
    for stage, unet in (('base', model.unet), ('up', model.unet_up)):
        if unet is None:
            continue
        inner, had_own = unet.forward, 'forward' in vars(unet)

        def counted(*a, _stage=stage, _inner=inner, **k):
            calls[_stage] += a[0].shape[0]
            return _inner(*a, **k)

        unet.forward = counted
        wrapped.append((unet, inner, had_own))
    try:
        yield
    finally:
        for unet, inner, had_own in wrapped:
            if had_own:
                unet.forward = inner
            else:
                del unet.forward


@contextlib.contextmanager
def variant_settings(model, variant, compile_mode, compiled):
    """Apply a variant's dtype, layout, threads, rows per call, attention kernels and compiled UNet forwards
    (``compiled``: this variant's, kept across rounds so that it compiles once); undo on exit,
    float32 weights included (casting back from half precision would keep its rounding)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from projects.glide.models.compile import compile_unet, uncompile_unet
    threads, rows = torch.get_num_threads(), model.rows_per_call
    unets = [u for u in (model.unet, model.unet_up) if u is not None]
    weights = {k: v.clone() for k, v in model.state_dict().items()} if variant['dtype'] != 'fp32' else None
    model.set_dtype(variant['dtype'])
    model.set_memory_format(variant['layout'])
    model.set_rows_per_call(variant['rows'])
    if variant['threads']:
        torch.set_num_threads(variant['threads'])
    for i, unet in enumerate(unets if variant['compile'] else []):
        if i not in compiled:
            compiled[i] = compile_unet(unet, **({'mode': compile_mode} if compile_mode else {})).forward
        unet.forward = compiled[i]
    try:
        with sdpa_kernel([SDPBackend.MATH]) if variant['math'] else contextlib.nullcontext():
            yield
    finally:
        torch.set_num_threads(threads)
        model.set_rows_per_call(rows)
        for unet in unets:
            uncompile_unet(unet)
        if weights is not None:
            model.set_dtype('fp32')
            model.load_state_dict(weights)


def _run_once(model, args, device, prompts):
    """(base seconds, upsampler seconds) of one cascade run."""
    _sync(device)
    t0 = time.perf_counter()
    upsampler, model.unet_up = model.unet_up, None
    try:
        low = model.infer(prompt=prompts, batch_size=args.batch_size, guidance_scale=args.guidance_scale,
                          num_inference_steps=args.steps, sampler=args.sampler, seed=0)['samples']
    finally:
        model.unet_up = upsampler
    _sync(device)
    t1 = time.perf_counter()
    if model.unet_up is not None:
        model.infer_up(low, prompt=prompts, num_inference_steps=args.steps_up, seed=0)
    _sync(device)
    return t1 - t0, time.perf_counter() - t1


def base_rows(args):
    """Rows of one base UNet batch: the prompts, and as many unconditional rows when guided."""
    return args.batch_size if args.guidance_scale == 1 else 2 * args.batch_size


def time_variant(model, variant, args, device, compiled):
    """One timed cascade run of a variant (after an untimed compiling run the first time
    a ``+compile`` variant runs): dict of seconds, UNet calls (whole batches: a sliced batch
    counts once), rows per call, threads, peak memory."""
    import torch
    prompts = [f'prompt number {i}' for i in range(args.batch_size)]
    calls = {'base': 0, 'up': 0}
    run = dict(compile_s=None)
    with torch.no_grad(), variant_settings(model, variant, args.compile_mode, compiled), \
            _counted_calls(model, calls):
        if variant['compile'] and not compiled.get('warm'):
            run['compile_s'] = sum(_run_once(model, args, device, prompts))
            compiled['warm'] = True
            calls.update(base=0, up=0)
        if device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(device)
        run['base_s'], run['up_s'] = _run_once(model, args, device, prompts)
        rows = dict(base=base_rows(args), up=args.batch_size)
        unets = [u for u in (model.unet, model.unet_up) if u is not None]
        run.update(calls={k: v // rows[k] for k, v in calls.items()}, threads=torch.get_num_threads(),
                   rows_per_call=[model.stage_rows_per_call(u) for u in unets],
                   peak=torch.cuda.max_memory_allocated(device) if device.type == 'cuda' else None)
    return run


def make_record(variant, runs, args, device, flops, has_upsampler):
    """The JSON record of a variant from its runs: the run of median total time."""
    import torch
    runs = sorted(runs, key=lambda r: r['base_s'] + r['up_s'])
    best = runs[(len(runs) - 1) // 2]
    compile_s = next((r['compile_s'] for r in runs if r['compile_s'] is not None), None)
    total = best['base_s'] + best['up_s']
    record = dict(
        variant=variant_name(variant), dtype=variant['dtype'], memory_format=variant['layout'],
        compiled=variant['compile'], compile_mode=args.compile_mode if variant['compile'] else None,
        attention='math' if variant['math'] else 'sdpa', threads=best['threads'],
        rows_per_call=best['rows_per_call'], device=str(device),
        gpu=torch.cuda.get_device_name(device) if device.type == 'cuda' else None,
        torch=torch.__version__, batch_size=args.batch_size, steps=str(args.steps),
        steps_up=str(args.steps_up) if has_upsampler else None, sampler=args.sampler, runs=len(runs),
        base_s=round(best['base_s'], 4), up_s=round(best['up_s'], 4), total_s=round(total, 4),
        compile_s=round(compile_s, 2) if compile_s is not None else None,
        base_calls=best['calls']['base'], up_calls=best['calls']['up'],
        base_ms_per_call=round(1e3 * best['base_s'] / max(1, best['calls']['base']), 3),
        up_ms_per_call=(round(1e3 * best['up_s'] / best['calls']['up'], 3)
                        if best['calls']['up'] else None),
        images_per_s=round(args.batch_size / total, 4),
        peak_gpu_mem_gib=round(best['peak'] / 2**30, 3) if best['peak'] is not None else None,
        base_flops=flops['base'] * best['calls']['base'],
        up_flops=flops['up'] * best['calls']['up'],
    )
    record['tflops_per_s'] = round((record['base_flops'] + record['up_flops']) / total / 1e12, 4)
    return record


def _count_flops(unet, x, t, text_emb, cond):
    """FLOPs of one UNet call (conv/matmul/bmm, 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        unet(x, t, text_emb=text_emb, **cond)
    return counter.get_total_flops()


def stage_flops(model, args, device):
    """FLOPs of one base call (the guided batch) and one upsampler call."""
    import torch
    b, rows = args.batch_size, base_rows(args)
    flops = {'base': 0, 'up': 0}
    size = model.unet.image_size
    with torch.no_grad():
        tokens, mask = model.tokenizer([''] * rows, device=device)
        flops['base'] = _count_flops(model.unet, torch.zeros(rows, 3, size, size, device=device),
                                     torch.zeros(rows, device=device, dtype=torch.long),
                                     model.unet.encode_text(tokens, mask), {})
        if model.unet_up is not None:
            up = model.unet_up.image_size
            tokens, mask = model.tokenizer([''] * b, device=device)
            flops['up'] = _count_flops(
                model.unet_up, torch.zeros(b, 3, up, up, device=device),
                torch.zeros(b, device=device, dtype=torch.long), model.unet_up.encode_text(tokens, mask),
                dict(low_res=torch.zeros(b, 3, size, size, device=device)))
    return flops


def markdown_table(records):
    """The records as a markdown table (one row per variant)."""
    lines = ['| variant | threads | rows/call base, up | base s | upsampler s | total s | compile s | '
             'ms/call base, up | images/s | TFLOP/s | speedup |',
             '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |']
    for r in records:
        rows = ', '.join('all' if n is None else str(n) for n in r['rows_per_call'])
        lines.append(f"| {r['variant']} | {r['threads']} | {rows} | {r['base_s']:.3f} | {r['up_s']:.3f} | "
                     f"{r['total_s']:.3f} | {r['compile_s'] if r['compile_s'] is not None else '-'} | "
                     f"{r['base_ms_per_call']:.1f}, {r['up_ms_per_call'] or 0:.1f} | {r['images_per_s']:.3f} | "
                     f"{r['tflops_per_s']:.3f} | {r['speedup']:.2f}x |")
    return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
    args = parse_args(argv)
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)
    import torch

    from projects.glide.engine.cli_checks import UsageError, check_file, check_writable_dir
    from projects.glide.engine.devices import DeviceError, check_device
    try:
        check_file(args.config, 'config file')
        device = torch.device(check_device(args.device or ('cuda' if torch.cuda.is_available()
                                                             else 'cpu')))
        variants = parse_variants(args.variants if args.variants is not None else default_variants(device))
        if args.markdown is not None:
            check_writable_dir(osp.dirname(osp.abspath(args.markdown)), '--markdown directory')
    except (UsageError, DeviceError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    from projects.glide.apis import init_glide
    torch.manual_seed(0)
    model = init_glide(args.config, device=str(device))
    flops = stage_flops(model, args, device)
    runs = [[] for _ in variants]
    compiled = [{} for _ in variants]
    for _ in range(args.repeats):  # rounds over all variants: load changes hit every variant alike
        for variant, variant_runs, cache in zip(variants, runs, compiled):
            variant_runs.append(time_variant(model, variant, args, device, cache))
    records = []
    for variant, variant_runs in zip(variants, runs):
        record = make_record(variant, variant_runs, args, device, flops, model.unet_up is not None)
        record['speedup'] = round(records[0]['total_s'] / record['total_s'] if records else 1., 3)
        records.append(record)
    report(records, markdown_table(records), args.markdown)
    return 0


if __name__ == '__main__':
    sys.exit(main())
