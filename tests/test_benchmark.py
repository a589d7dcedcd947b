"""tools/benchmark.py on a tiny config on the CPU: well-formed JSON, sane numbers
(never timed against a threshold)."""
import json
import re

from conftest import ROOT, run_tool

TINY = ROOT / 'projects' / 'glide' / 'configs' / 'glide_tiny_shapes-64-256.py'


def test_benchmark_prints_one_record_per_variant():
    proc = run_tool('tools/benchmark.py', '--config', TINY, '--device', 'cpu', '--batch-size', '2',
                    '--steps', '3', '--steps-up', '2', '--variants', 'fp32,bf16,bf16+cl,fp32+r1')
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{')]
    assert [r['variant'] for r in records] == ['fp32-eager', 'bf16-eager',
                                                'bf16-channels_last-eager', 'fp32-eager-rows1']
    assert [r['memory_format'] for r in records] == ['contiguous', 'contiguous', 'channels_last', 'contiguous']
    assert [r['dtype'] for r in records] == ['fp32', 'bf16', 'bf16', 'fp32']
    # the model's 'auto' rows per call on a CPU (bf16: half the bytes, twice the rows); +r1: one row a call,
    # still 3 + 2 whole-batch calls
    assert [r['rows_per_call'] for r in records] == [[16, 1], [32, 3], [32, 3], [1, 1]]
    assert re.search(r'\| fp32-eager-rows1 \| \d+ \| 1, 1 \|', proc.stderr)
    for r in records:
        assert r['device'] == 'cpu' and r['batch_size'] == 2
        assert r['base_calls'] == 3 and r['up_calls'] == 2
        assert r['total_s'] > 0 and abs(r['total_s'] - r['base_s'] - r['up_s']) < 1e-3
        assert r['images_per_s'] > 0 and r['tflops_per_s'] > 0
        assert r['base_ms_per_call'] > 0 and r['up_ms_per_call'] > 0
        # guided base calls see 2B rows, so they cost twice an unguided one per image
        assert r['base_flops'] > 0 and r['up_flops'] > 0
    assert records[0]['speedup'] == 1.0
    assert records[0]['base_flops'] == records[1]['base_flops'] == records[2]['base_flops'] == records[3]['base_flops']


def test_benchmark_flops_scale_with_batch_and_guidance():
    def flops(*extra):
        proc = run_tool('tools/benchmark.py', '--config', TINY, '--device', 'cpu', '--steps', '1',
                        '--steps-up', '1', '--variants', 'fp32', *extra)
        return json.loads(proc.stdout.strip().splitlines()[-1])
    one, two = flops('--batch-size', '1'), flops('--batch-size', '2')
    unguided = flops('--batch-size', '1', '--guidance-scale', '1')
    assert two['base_flops'] == 2 * one['base_flops'] and two['up_flops'] == 2 * one['up_flops']
    assert one['base_flops'] == 2 * unguided['base_flops']


def test_benchmark_bad_input():
    for bad in ('fp8', 'bf16+nhwc'):
        proc = run_tool('tools/benchmark.py', '--config', TINY, '--variants', bad, '--device', 'cpu',
                        check=False)
        assert proc.returncode == 1
        assert f"--variants must list DTYPE or DTYPE+cl with DTYPE fp32, fp16 or bf16, got '{bad}'" \
            in proc.stderr
    proc = run_tool('tools/benchmark.py', '--config', 'nope.py', check=False)
    assert proc.returncode == 1 and 'config file not found: nope.py' in proc.stderr


def _benchmark_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location('glide_benchmark', ROOT / 'tools' / 'benchmark.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_variant_syntax():
    bench = _benchmark_module()
    v = bench.parse_variant('bf16+cl+compile+t2')
    assert v == dict(dtype='bf16', layout='channels_last', compile=True, math=False, threads=2, rows='auto')
    assert bench.variant_name(v) == 'bf16-channels_last-compile-t2'
    assert bench.variant_name(bench.parse_variant('fp32+math')) == 'fp32-math-eager'
    assert bench.parse_variant('fp32+r8')['rows'] == 8 and bench.parse_variant('fp32+rall')['rows'] is None
    assert bench.variant_name(bench.parse_variant('fp32+cl+rall')) == 'fp32-channels_last-eager-rowsall'
    for bad in ('fp8', 'fp32+cl+cl', 'fp32+t0', 'fp32+t1+t2', 'fp32+', '+cl', 'fp32+compile+nhwc', 'fp32+r0',
                'fp32+r2+rall', 'fp32+rx', 'fp32+r'):
        assert bench.parse_variant(bad) is None, bad


def test_benchmark_argument_errors_are_one_line():
    cases = [(('--steps', '0'), 'argument --steps: steps must be >= 1, got 0'),
             (('--steps-up', 'fast'), "argument --steps-up: Invalid timestep respacing spec 'fast'"),
             (('--batch-size', '0'), 'argument --batch-size: must be >= 1, got 0'),
             (('--repeats', 'x'), "argument --repeats: not an integer: 'x'"),
             (('--guidance-scale', 'nan'), 'argument --guidance-scale: must be a finite number, got nan'),
             (('--sampler', 'euler'), "argument --sampler: invalid choice: 'euler'")]
    for args, message in cases:
        proc = run_tool('tools/benchmark.py', '--config', TINY, '--device', 'cpu', *args, check=False)
        assert proc.returncode == 2, args
        errors = [line for line in proc.stderr.splitlines() if 'error:' in line]
        assert len(errors) == 1 and message in errors[0] and 'Traceback' not in proc.stderr, proc.stderr
    proc = run_tool('tools/benchmark.py', '--config', TINY, '--device', 'cpu', '--variants', 'fp32+t0', check=False)
    assert proc.returncode == 1
    assert "got 'fp32+t0' (each variant: DTYPE[+cl][+compile][+math][+tN][+rN|+rall])" in proc.stderr


def test_benchmark_threads_attention_and_markdown(tmp_path):
    table = tmp_path / 'table.md'
    proc = run_tool('tools/benchmark.py', '--config', TINY, '--device', 'cpu', '--batch-size', '1', '--steps', '1',
                    '--steps-up', '1', '--variants', 'fp32+t1,fp32+cl+math+t1', '--markdown', table)
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r['variant'] for r in records] == ['fp32-eager-t1', 'fp32-channels_last-math-eager-t1']
    assert [r['attention'] for r in records] == ['sdpa', 'math'] and {r['threads'] for r in records} == {1}
    assert not any(r['compiled'] for r in records) and records[0]['compile_s'] is None
    rows = table.read_text().splitlines()
    assert rows[0].startswith('| variant | threads |') and len(rows) == 4
    assert rows[2].startswith('| fp32-eager-t1 | 1 |') and rows[2].endswith('| 1.00x |')
    assert table.read_text() in proc.stderr


def _gpu_report(*args, env=None):
    import os
    import subprocess
    import sys
    return subprocess.run(['bash', str(ROOT / 'tools' / 'gpu_report.sh'), '--python', sys.executable, *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})})


def test_gpu_report_fails_fast_without_cuda(tmp_path):
    proc = _gpu_report('--out', tmp_path / 'r', env=dict(CUDA_VISIBLE_DEVICES=''))
    assert proc.returncode == 1 and not (tmp_path / 'r').exists()
    assert proc.stderr.startswith('error: no CUDA device: tools/gpu_report.sh needs one GPU')
    proc = _gpu_report('--bogus')
    assert proc.returncode == 2 and 'error: unknown argument --bogus' in proc.stderr


def test_gpu_report_dry_run_plumbing(tmp_path):
    out = tmp_path / 'report'
    proc = _gpu_report('--dry-run', '--out', out)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in (out / 'report.jsonl').read_text().splitlines()]
    assert [(r['recipe'], r['variant']) for r in records] == [
        ('reference', 'fp32-eager'), ('reference', 'fp32-channels_last-eager'),
        ('solver', 'fp32-eager'), ('solver', 'fp32-channels_last-eager')]
    assert [r['sampler'] for r in records] == ['ddim', 'ddim', 'dpmsolver++', 'dpmsolver++']
    assert all(r['base_calls'] == 2 and r['up_calls'] == 1 for r in records)
    md = (out / 'report.md').read_text()
    assert md.count('### ') == 2 and md.count('| fp32-eager |') == 2 and md in proc.stdout
    assert 'torch' in (out / 'env.txt').read_text()


def test_benchmark_compile_variant_compiles_once_across_rounds(monkeypatch, capsys):
    """``+compile`` in-process with a backend that runs the captured graphs (inductor would build
    C++ for minutes): one untimed compiling run, then the rounds reuse the two graphs."""
    import torch

    from projects.glide.models import compile as glide_compile
    torch._dynamo.reset()  # graphs compiled by other tests would be reused
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    monkeypatch.setitem(glide_compile.DEFAULTS, 'backend', counting_backend)
    bench = _benchmark_module()
    assert bench.main(['--config', str(TINY), '--device', 'cpu', '--batch-size', '1', '--steps', '1',
                       '--steps-up', '1', '--variants', 'fp32,fp32+compile', '--repeats', '2']) == 0
    eager, compiled = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert compiled['variant'] == 'fp32-compile' and compiled['compiled'] and compiled['compile_s'] > 0
    assert eager['compile_s'] is None and eager['runs'] == compiled['runs'] == 2
    assert compiled['base_calls'] == 1 and compiled['up_calls'] == 1  # the compiling run is not counted
    assert len(graphs) == 2  # one per stage, for the warm-up and both rounds


def test_variant_settings_restore_the_float32_weights():
    """A bf16 variant leaves the model as it found it: float32 weights, not bf16-rounded ones,
    so a float32 variant of the next round runs the same model."""
    import torch
    from tool_helpers import load_tool

    from projects.glide.apis import init_glide
    tool = load_tool('benchmark')
    model = init_glide(str(TINY))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with tool.variant_settings(model, tool.parse_variant('bf16+cl'), None, {}):
        assert model.unet.dtype == model.unet_up.dtype == torch.bfloat16
        assert model.memory_format == 'channels_last'
    after = model.state_dict()
    assert model.unet.dtype == torch.float32
    assert all(torch.equal(after[k], v) for k, v in before.items())
