"""tools/benchmark.py on a tiny config on the CPU: well-formed JSON, sane numbers
(never timed against a threshold)."""
import json

from conftest import ROOT, run_tool

TINY = ROOT / 'projects' / 'glide' / 'configs' / 'glide_tiny_shapes-64-256.py'


def test_benchmark_prints_one_record_per_variant():
    proc = run_tool('tools/benchmark.py', '--config', TINY, '--device', 'cpu', '--batch-size', '2',
                    '--steps', '3', '--steps-up', '2', '--variants', 'fp32,bf16,bf16+cl')
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{')]
    assert [r['variant'] for r in records] == ['fp32-eager', 'bf16-eager',
                                                'bf16-channels_last-eager']
    assert [r['memory_format'] for r in records] == ['contiguous', 'contiguous', 'channels_last']
    assert [r['dtype'] for r in records] == ['fp32', 'bf16', 'bf16']
    for r in records:
        assert r['device'] == 'cpu' and r['batch_size'] == 2
        assert r['base_calls'] == 3 and r['up_calls'] == 2
        assert r['total_s'] > 0 and abs(r['total_s'] - r['base_s'] - r['up_s']) < 1e-3
        assert r['images_per_s'] > 0 and r['tflops_per_s'] > 0
        assert r['base_ms_per_call'] > 0 and r['up_ms_per_call'] > 0
        # guided base calls see 2B rows, so they cost twice an unguided one per image
        assert r['base_flops'] > 0 and r['up_flops'] > 0
    assert records[0]['speedup'] == 1.0
    assert records[0]['base_flops'] == records[1]['base_flops'] == records[2]['base_flops']


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
