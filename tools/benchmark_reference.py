"""Time this project's GLIDE base model against openai's reference code on the same weights.

    python tools/benchmark_reference.py --reference ~/src/glide-text2im [--device cpu]
        [--num-channels 64] [--xf-width 256] [--batch-size 1] [--steps ddim25]
        [--guidance-scale 3] [--variants fp32,fp32+cl,fp32+t2] [--repeats 5] [--markdown FILE]

openai's ``glide_text2im`` is neither on PyPI nor bundled here: ``--reference``
is a checkout of github.com/openai/glide-text2im (the folder that holds
``glide_text2im/``), and its code is imported from there. The tool builds the
reference base model with openai's default options (``--num-channels``,
``--xf-width`` and friends override them), gives every weight a random
non-zero value, writes it as an openai checkpoint, converts it with
``tools/model_converters/glide_openai_to_mmagic.py`` and loads the result with
``mmagic.apis.init_model``: the public path. Then, in ``--repeats`` interleaved
rounds (median kept), it times

- ``call``: one classifier-free guided UNet call (2B rows, tokens in), and
- ``loop``: a full guided DDIM loop from the same start noise: the reference's
  ``ddim_sample_loop`` with its text2im notebook's guidance function, against
  this project's ``infer``,

for the reference (its defaults, and with its ``cache_text_emb`` option on)
and for each of this project's variants (``tools/benchmark.py``'s
``DTYPE[+cl][+compile][+math][+tN]``). One JSON line per row, with the
speedup over the reference and the largest absolute difference of the
outputs; then a markdown table on stderr (and in ``--markdown FILE``).
"""
import argparse
import contextlib
import functools
import os.path as osp
import sys
import tempfile
import time

TOOLS = osp.dirname(osp.abspath(__file__))
REPO_ROOT = osp.dirname(TOOLS)
for path in (REPO_ROOT, TOOLS):
    if path not in sys.path:
        sys.path.insert(0, path)

from benchmark import parse_variants, report, variant_name, variant_settings  # noqa: E402

from projects.glide.engine.cli_checks import finite_float, positive_int, sampling_steps  # noqa: E402

#: openai option overrides the tool exposes (the rest keep openai's defaults)
OPTION_FLAGS = dict(num_channels=64, num_res_blocks=3, xf_width=256, xf_layers=16, xf_heads=8)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--reference', required=True,
                        help='checkout of openai/glide-text2im (the folder holding glide_text2im/)')
    parser.add_argument('--device', default=None, help='cuda or cpu (default: cuda if available)')
    for name, default in OPTION_FLAGS.items():
        parser.add_argument('--' + name.replace('_', '-'), type=positive_int, default=default,
                            help=f'openai option {name} (default {default})')
    parser.add_argument('--batch-size', type=positive_int, default=1)
    parser.add_argument('--steps', type=sampling_steps, default='ddim25',
                        help='respacing of the DDIM loop (both sides)')
    parser.add_argument('--guidance-scale', type=finite_float, default=3.)
    parser.add_argument('--variants', default='fp32',
                        help='this project\'s variants, DTYPE[+cl][+compile][+math][+tN]')
    parser.add_argument('--repeats', type=positive_int, default=5,
                        help='interleaved rounds over all rows (the median is kept)')
    parser.add_argument('--markdown', default=None, help='also write the markdown table to this file')
    return parser.parse_args(argv)


def import_reference(checkout):
    """openai's ``model_creation`` module from a checkout; UsageError if it is not one."""
    import importlib

    from projects.glide.engine.cli_checks import UsageError
    if not osp.isfile(osp.join(checkout, 'glide_text2im', 'model_creation.py')):
        raise UsageError(f'--reference must be a checkout of openai/glide-text2im (a folder holding '
                         f'glide_text2im/model_creation.py), got {checkout}')
    sys.path.insert(0, osp.abspath(checkout))
    try:
        return importlib.import_module('glide_text2im.model_creation')
    except ImportError as err:
        raise UsageError(f'cannot import glide_text2im from {checkout}: {err}') from err
    finally:
        sys.path.remove(osp.abspath(checkout))


def build_pair(creation, args, device, workdir):
    """(reference model, its diffusion, this project's model) with the same random weights."""
    import torch
    from mmagic.apis import init_model
    from model_converters.glide_openai_to_mmagic import main as convert

    from projects.glide.fileio import atomic_save
    options = creation.model_and_diffusion_defaults()
    options.update({k: getattr(args, k) for k in OPTION_FLAGS}, use_fp16=False,
                   timestep_respacing=str(args.steps), dropout=0.0)
    torch.manual_seed(0)
    reference, diffusion = creation.create_model_and_diffusion(**options)
    with torch.no_grad():  # non-zero everywhere, zero-initialised output layers included
        for param in reference.parameters():
            param.add_(torch.randn_like(param), alpha=0.02)
    checkpoint = osp.join(workdir, 'openai-base.pt')
    atomic_save(dict(options=options, state_dict=reference.state_dict()), checkpoint)
    ours_ckpt, ours_cfg = osp.join(workdir, 'glide.pth'), osp.join(workdir, 'glide.py')
    with contextlib.redirect_stdout(sys.stderr):
        if convert(['--base', checkpoint, '--out', ours_ckpt, '--config-out', ours_cfg]):
            raise RuntimeError('the converter failed on the reference weights')
        ours = init_model(ours_cfg, ours_ckpt, device=str(device))
    return reference.eval().to(device), diffusion, ours


def reference_loop(reference, diffusion, tokens, mask, noise, scale):
    """The reference's guided DDIM loop, guidance as in its text2im notebook."""
    import torch

    def guided(x_t, ts, **kwargs):
        half = x_t[:len(x_t) // 2]
        out = reference(torch.cat([half, half]), ts, **kwargs)
        cond, uncond = out[:, :3].chunk(2)
        eps = uncond + scale * (cond - uncond)
        return torch.cat([torch.cat([eps, eps]), out[:, 3:]], dim=1)

    samples = diffusion.ddim_sample_loop(
        guided, (2 * len(noise), *noise.shape[1:]), noise=torch.cat([noise, noise]),
        clip_denoised=True, model_kwargs=dict(tokens=tokens, mask=mask), device=noise.device)
    return samples[:len(noise)]


def _timed(fn, device):
    import torch
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def make_inputs(ours, args, device):
    """Prompts, conditional+unconditional tokens and mask (2B rows), one call's x and t, and x_T."""
    import torch
    b = args.batch_size
    prompts = [f'a photo of prompt number {i}' for i in range(b)]
    tokens, mask = ours.tokenizer(prompts + [''] * b, device=device)
    g = torch.Generator().manual_seed(1)
    size = ours.unet.image_size
    x = torch.randn(b, 3, size, size, generator=g).to(device)
    t = torch.full((2 * b,), 500, device=device, dtype=torch.long)
    noise = torch.randn(b, 3, size, size, generator=g).to(device)
    return prompts, tokens, mask, torch.cat([x, x]), t, noise


def run_rows(reference, diffusion, ours, variants, args, device):
    """{row name: dict(call=[s], loop=[s], call_out, loop_out)} over interleaved rounds."""
    import torch
    prompts, tokens, mask, x, t, noise = make_inputs(ours, args, device)
    threads = torch.get_num_threads()
    rows = {'reference': dict(threads=threads), 'reference, cache_text_emb': dict(threads=threads)}
    rows.update({variant_name(v): dict(threads=v['threads'] or threads) for v in variants})
    compiled = [{} for _ in variants]

    def reference_row(row, cache):
        reference.cache_text_emb, reference.cache = cache, None
        call_s, row['call_out'] = _timed(lambda: reference(x, t, tokens=tokens, mask=mask), device)
        loop_s, row['loop_out'] = _timed(
            lambda: reference_loop(reference, diffusion, tokens, mask, noise, args.guidance_scale),
            device)
        return call_s, loop_s

    def our_loop():
        return ours.infer(init_image=noise, prompt=prompts, batch_size=args.batch_size,
                          guidance_scale=args.guidance_scale, num_inference_steps=args.steps,
                          sampler='ddim')['samples']

    def our_row(row, variant, cache):
        with variant_settings(ours, variant, None, cache):
            if variant['compile'] and not cache.get('warm'):  # compile outside the timing
                ours.unet(x, t, tokens, mask)
                our_loop()
                cache['warm'] = True
            call_s, call_out = _timed(lambda: ours.unet(x, t, tokens, mask), device)
            loop_s, loop_out = _timed(our_loop, device)
        row['call_out'], row['loop_out'] = call_out.float(), loop_out.float()
        return call_s, loop_s

    jobs = [(rows[name], functools.partial(reference_row, cache=cache))
            for name, cache in (('reference', False), ('reference, cache_text_emb', True))]
    jobs += [(rows[variant_name(v)], functools.partial(our_row, variant=v, cache=cache))
             for v, cache in zip(variants, compiled)]
    with torch.no_grad():
        for _ in range(args.repeats):
            for row, job in jobs:
                call_s, loop_s = job(row)
                row.setdefault('call', []).append(call_s)
                row.setdefault('loop', []).append(loop_s)
    reference.cache_text_emb, reference.cache = False, None
    return rows


def make_records(rows, args, device):
    """One record per row: median seconds, speedup over the reference and output difference."""
    import statistics

    import torch
    ref = rows['reference']
    ref_call, ref_loop = statistics.median(ref['call']), statistics.median(ref['loop'])
    records = []
    for name, row in rows.items():
        call, loop = statistics.median(row['call']), statistics.median(row['loop'])
        records.append(dict(
            row=name, device=str(device), threads=row['threads'], torch=torch.__version__,
            batch_size=args.batch_size, steps=str(args.steps), runs=len(row['call']),
            call_ms=round(1e3 * call, 2), loop_s=round(loop, 4),
            call_speedup=round(ref_call / call, 3), loop_speedup=round(ref_loop / loop, 3),
            call_max_abs_diff=float((row['call_out'] - ref['call_out']).abs().max()),
            loop_max_abs_diff=float((row['loop_out'] - ref['loop_out']).abs().max())))
    return records


def markdown_table(records):
    lines = ['| row | guided call ms | vs reference | loop s | vs reference | max abs diff call, loop |',
             '| --- | --- | --- | --- | --- | --- |']
    for r in records:
        lines.append(f"| {r['row']} | {r['call_ms']:.1f} | {r['call_speedup']:.2f}x | {r['loop_s']:.3f} | "
                     f"{r['loop_speedup']:.2f}x | {r['call_max_abs_diff']:.1e}, "
                     f"{r['loop_max_abs_diff']:.1e} |")
    return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from projects.glide.engine.cli_checks import UsageError, check_writable_dir
    from projects.glide.engine.devices import DeviceError, check_device
    try:
        device = torch.device(check_device(args.device or ('cuda' if torch.cuda.is_available()
                                                             else 'cpu')))
        variants = parse_variants(args.variants)
        if args.markdown is not None:
            check_writable_dir(osp.dirname(osp.abspath(args.markdown)), '--markdown directory')
        creation = import_reference(args.reference)
    except (UsageError, DeviceError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as workdir:
        reference, diffusion, ours = build_pair(creation, args, device, workdir)
    records = make_records(run_rows(reference, diffusion, ours, variants, args, device), args, device)
    report(records, markdown_table(records), args.markdown)
    return 0


if __name__ == '__main__':
    sys.exit(main())
