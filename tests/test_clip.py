"""Exactness of the noise-aware CLIP and the CLIP-guidance rules against openai's GLIDE.

Everything goes through the public path: the converter tool turns the fixture's
openai-layout ``clip.pt`` into an mmagic checkpoint and config, the CLIP is
built from the config's ``model.clip`` and loads its part of the checkpoint
strictly. Tolerances from the fixture README: tokens exact; embeddings,
gradients and posterior tensors within 1e-4 relative (``max|out - ref| <=
1e-4 * max|ref|``).
"""
import json

import pytest
import torch
from conftest import MANIFESTS, REFERENCE, run_tool
from mmagic.registry import DIFFUSION_SCHEDULERS, MODELS
from mmengine import Config
from mmengine.registry import init_default_scope

from projects.glide.checkpoint import CheckpointMismatchError
from projects.glide.convert import infer_clip_config, openai_clip_key_to_mmagic
from projects.glide.models.clip import NoisedCLIP, condition_mean, condition_score

pytestmark = pytest.mark.shared  # reads ../shared/fixtures

init_default_scope('mmagic')
REL_TOL = 1e-4
CONVERTER = 'tools/model_converters/glide_openai_to_mmagic.py'

#: openai's released noise-aware CLIP (clip/image-enc + clip/text-enc)
RELEASED_CLIP = dict(
    type='NoisedCLIP',
    embed_dim=512,
    logit_scale=100.0,
    text_encoder=dict(width=512, heads=8, layers=12, vocab_size=65536, text_ctx=77),
    image_encoder=dict(width=768, heads=12, layers=12, image_size=64, patch_size=4, num_timesteps=1000),
)


def assert_close(out, ref, what):
    err = (out - ref).abs().max().item()
    assert err <= REL_TOL * ref.abs().max().item(), f'{what}: max error {err}'


def clip_state(checkpoint):
    """The ``clip.`` part of a converted checkpoint, prefix removed."""
    state_dict = torch.load(checkpoint, weights_only=True)['state_dict']
    return {k[len('clip.'):]: v for k, v in state_dict.items() if k.startswith('clip.')}


@pytest.fixture(scope='module')
def clip(converted_clip):
    model = MODELS.build(Config.fromfile(converted_clip[0]).model.clip)
    model.load_state_dict(clip_state(converted_clip[1]))
    return model.eval()


def test_written_config(converted_clip):
    cfg = Config.fromfile(converted_clip[0]).model.clip
    assert cfg.to_dict() == dict(
        type='NoisedCLIP', embed_dim=32, logit_scale=100.0,
        text_encoder=dict(width=32, heads=2, layers=2, vocab_size=65536, text_ctx=77),
        image_encoder=dict(width=48, heads=3, layers=2, image_size=64, patch_size=8, num_timesteps=1000))


def test_tokenizer_matches_reference(clip, clip_cases):
    case = clip_cases['clip_tokenizer']
    tok = clip.tokenizer
    assert (tok.start_token, tok.end_token, tok.pad_token, tok.text_ctx) == (
        case['start_token'], case['end_token'], case['pad_token'], case['text_ctx'])
    for prompt, raw in zip(case['prompts'], case['raw_encode']):
        assert tok.encode(prompt) == raw, prompt
    tokens, lens = clip.tokenize(case['prompts'])
    assert torch.equal(tokens, case['tokens']) and torch.equal(lens, case['lens'])
    # the 87-id prompt keeps its first 75 ids
    assert lens.max().item() == 77 and len(case['raw_encode'][5]) == 87


def test_text_embeddings(clip, clip_cases):
    case = clip_cases['clip_text_embeddings']
    with torch.no_grad():
        raw = clip.text_encoder(case['tokens'], case['lens'])
        out = clip.encode_text(case['tokens'], case['lens'])
    assert_close(raw, case['raw'], 'raw')
    assert_close(out, case['out'], 'normalised')


def test_image_embeddings(clip, clip_cases):
    case = clip_cases['clip_image_embeddings']
    for t, raw_ref, out_ref in zip(case['t'], case['raw'], case['out']):
        with torch.no_grad():
            raw = clip.image_encoder(case['images'], t)
            out = clip.encode_image(case['images'], t)
        assert_close(raw, raw_ref, f'raw at t={t.tolist()}')
        assert_close(out, out_ref, f'normalised at t={t.tolist()}')


def test_guidance_grad(clip, clip_cases):
    """openai's cond_fn: gradients, embeddings and loss; from a no_grad loop,
    with no graph left behind."""
    case = clip_cases['clip_cond_fn']
    assert torch.equal(clip.tokenize(case['prompts'])[0], case['tokens'])
    assert clip.logit_scale.item() == clip_cases['meta']['logit_scale']
    assert clip.logit_scale.exp().item() == clip_cases['meta']['exp_logit_scale']
    with torch.no_grad():
        z_text = clip.encode_text(case['tokens'], case['lens'])
        assert_close(z_text, case['text_embeddings'], 'text embeddings')
        for x, t, grad_ref, z_ref, loss_ref in zip(case['x'], case['t'], case['grad'],
                                                   case['image_embeddings'], case['loss']):
            z_image = clip.encode_image(x, t)
            assert_close(z_image, z_ref, 'image embeddings')
            assert_close(clip.similarity(z_text, z_image).sum(), loss_ref, 'loss')
            grad = clip.guidance_grad(x, t, z_text, case['grad_scale'])
            assert_close(grad, grad_ref, f'grad at t={t.tolist()}')
            assert grad.grad_fn is None and not grad.requires_grad
            # half-precision samples are guided in float32
            half = clip.guidance_grad(x.half(), t, z_text, case['grad_scale'])
            assert half.dtype == torch.float32
            assert_close(half, clip.guidance_grad(x.half().float(), t, z_text, case['grad_scale']),
                         'fp16 input')


def test_guided_posterior_100(clip, clip_cases, converted_clip):
    """The mean shift (ancestral) and the score shift (DDIM) at three steps of
    the respaced "100" process, the CLIP seeing the original timestep."""
    case = clip_cases['clip_guided_posterior_100']
    scheduler = DIFFUSION_SCHEDULERS.build(Config.fromfile(converted_clip[0]).model.diffusion_scheduler)
    scheduler.set_timesteps(case['respacing'])
    diffusion = scheduler.diffusion
    assert diffusion.timestep_map.tolist() == case['timesteps']
    with torch.no_grad():
        z_text = clip.encode_text(case['clip_tokens'], case['clip_lens'])
    for step in case['steps']:
        index, name = step['step_index'], f"step {step['step_index']}"
        timestep = int(diffusion.timestep_map[index])
        assert timestep == step['timestep']
        out = diffusion.p_mean_variance(step['model_output'], step['x_t'], index,
                                        clip_denoised=case['clip_denoised'])
        for key in ('mean', 'variance', 'log_variance', 'pred_xstart'):
            assert_close(out[key], step[key], f'{name} {key}')
        with torch.no_grad():
            grad = clip.guidance_grad(step['x_t'], timestep, z_text, case['grad_scale'])
        assert_close(grad, step['grad'], f'{name} grad')
        assert_close(condition_mean(out['mean'], out['variance'], grad), step['cond_mean'],
                     f'{name} cond_mean')
        score = condition_score(diffusion, step['x_t'], index, out['pred_xstart'], grad)
        assert_close(score['pred_xstart'], step['score_pred_xstart'], f'{name} score_pred_xstart')
        assert_close(score['mean'], step['score_mean'], f'{name} score_mean')


def manifest_clip_shapes():
    data = json.loads((MANIFESTS / 'openai-clip.json').read_text())
    return data, {f'{tower}.{openai_clip_key_to_mmagic(k)}': tuple(v)
                  for tower in ('image_encoder', 'text_encoder')
                  for k, v in data[tower]['state_dict'].items()}


def test_released_architecture_matches_manifest():
    data, expected = manifest_clip_shapes()
    with torch.device('meta'):
        model = MODELS.build(RELEASED_CLIP)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    for tower in ('image_encoder', 'text_encoder'):
        params = sum(p.numel() for p in getattr(model, tower).parameters())
        assert params == data[tower]['num_parameters'], tower
    # the released files carry no config: shapes plus the released head counts rebuild it
    fake = {tower: {k: torch.empty(v, device='meta') for k, v in data[tower]['state_dict'].items()}
            for tower in ('image_encoder', 'text_encoder')}
    assert infer_clip_config(fake['image_encoder'], fake['text_encoder']) == RELEASED_CLIP


def test_released_two_file_form_converts(converted_clip, tmp_path):
    """--clip-image/--clip-text (openai's released files: plain state dicts,
    no config) give the same tensors; head counts fall back to the released
    model's."""
    clip_file = torch.load(REFERENCE / 'clip.pt', weights_only=True)
    torch.save(clip_file['image_encoder'], tmp_path / 'image-enc.pt')
    torch.save(clip_file['text_encoder'], tmp_path / 'text-enc.pt')
    ckpt, cfg = tmp_path / 'x.pth', tmp_path / 'x.py'
    run_tool(CONVERTER, '--base', REFERENCE / 'base.pt', '--clip-image', tmp_path / 'image-enc.pt',
             '--clip-text', tmp_path / 'text-enc.pt', '--out', ckpt, '--config-out', cfg)
    ours, theirs = clip_state(ckpt), clip_state(converted_clip[1])
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    written = Config.fromfile(str(cfg)).model.clip
    assert (written.text_encoder.heads, written.image_encoder.heads) == (8, 12)


@pytest.mark.parametrize('args,message', [
    (['--clip-image', REFERENCE / 'clip.pt'], '--clip-image and --clip-text must be given together'),
    (['--clip', REFERENCE / 'clip.pt', '--clip-text', REFERENCE / 'clip.pt'],
     'pass either --clip or --clip-image with --clip-text, not both'),
])
def test_converter_clip_arguments(tmp_path, args, message):
    proc = run_tool(CONVERTER, '--base', REFERENCE / 'base.pt', *args, '--out', tmp_path / 'x.pth',
                    check=False)
    assert proc.returncode == 1 and message in proc.stderr
    assert not (tmp_path / 'x.pth').exists()


def test_converter_rejects_bad_clip_files(tmp_path):
    clip_file = torch.load(REFERENCE / 'clip.pt', weights_only=True)
    torch.save(dict(text_encoder=clip_file['text_encoder']), tmp_path / 'no-image.pt')
    proc = run_tool(CONVERTER, '--base', REFERENCE / 'base.pt', '--clip', tmp_path / 'no-image.pt',
                    '--out', tmp_path / 'x.pth', check=False)
    assert proc.returncode == 1
    assert "the CLIP checkpoint lacks 'image_encoder'" in proc.stderr
    torch.save(clip_file['text_encoder'], tmp_path / 'text-enc.pt')
    torch.save(clip_file['image_encoder'], tmp_path / 'image-enc.pt')
    proc = run_tool(CONVERTER, '--base', REFERENCE / 'base.pt', '--clip-image', tmp_path / 'text-enc.pt',
                    '--clip-text', tmp_path / 'image-enc.pt', '--out', tmp_path / 'x.pth', check=False)
    assert proc.returncode == 1
    assert ('image_encoder is not an openai CLIP image encoder: blocks.input.patch_proj, '
            'blocks.input.w_t missing (it holds blocks.input.w_voc: were the two files swapped?)'
            ) in proc.stderr
    assert not (tmp_path / 'x.pth').exists()


def test_heads_must_split_the_width():
    data, _ = manifest_clip_shapes()
    fake = {tower: {k: torch.empty(v, device='meta') for k, v in data[tower]['state_dict'].items()}
            for tower in ('image_encoder', 'text_encoder')}
    with pytest.raises(ValueError, match=r'CLIP width 512 does not split into n_head_text=8 heads of 32'):
        infer_clip_config(fake['image_encoder'], fake['text_encoder'],
                          dict(n_head_text=8, n_head_state_text=32))


def test_mismatched_clip_checkpoint_fails_loudly(converted_clip):
    model = MODELS.build(Config.fromfile(converted_clip[0]).model.clip)
    state = clip_state(converted_clip[1])
    bad = dict(state)
    bad.pop('text_encoder.proj.weight')
    bad['image_encoder.time_embedding.weight'] = torch.zeros(500, 48)
    with pytest.raises(CheckpointMismatchError) as err:
        model.load_state_dict(bad)
    assert 'missing keys: text_encoder.proj.weight' in str(err.value)
    assert ('shape mismatch for image_encoder.time_embedding.weight: checkpoint (500, 48), '
            'model (1000, 48)') in str(err.value)


def test_input_errors(clip, clip_cases):
    case = clip_cases['clip_cond_fn']
    x, z_text = case['x'][0], torch.zeros(2, 32)
    with pytest.raises(ValueError, match=r't must lie in \[0, 1000\), got values from 0 to 1000'):
        clip.encode_image(x, torch.tensor([0, 1000]))
    with pytest.raises(ValueError, match=r'got 3 timesteps t for a batch of 2'):
        clip.encode_image(x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r'x must have shape \(B, 3, 64, 64\), got \(2, 3, 32, 32\)'):
        clip.encode_image(x[..., :32, :32], 0)
    with pytest.raises(ValueError, match=r'lens must lie in \[1, 78\), got values from 0 to 0'):
        clip.encode_text(case['tokens'], torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r'text_embeddings must have shape \(2, 32\) for x of batch 2, '
                       r'got \(1, 32\)'):
        clip.guidance_grad(x, 0, z_text[:1], 1.)
    with torch.inference_mode(), pytest.raises(RuntimeError, match='not torch.inference_mode'):
        clip.guidance_grad(x, 0, z_text, 1.)


@pytest.mark.parametrize('kwargs,message', [
    (dict(tokenizer=dict(type='GlideCLIPTokenizer', text_ctx=64)),
     "tokenizer.text_ctx 64 differs from the text encoder's text_ctx 77"),
    (dict(text_encoder=dict(heads=7)), 'CLIP width 512 is not divisible by 7 heads'),
    (dict(image_encoder=dict(patch_size=5)),
     'image_encoder.image_size 64 is not a multiple of image_encoder.patch_size 5'),
    (dict(image_encoder=dict(layers=0)), 'image_encoder.layers must be an int >= 1, got 0'),
    (dict(logit_scale=0), 'logit_scale must be a number > 0, got 0'),
])
def test_config_errors(kwargs, message):
    with torch.device('meta'), pytest.raises(ValueError, match=message):
        NoisedCLIP(**kwargs)
