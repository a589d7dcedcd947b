"""The web page (tools/glide_webui.py): its checks in-process, then the app itself started on a free
localhost port and driven through its API (gradio_client) and in headless Chromium (selenium with
Debian's chromium and chromium-driver, which .ci/run installs)."""
import os
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import wait
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tool_helpers import free_port, load_tool

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = Path('/usr/bin/chromium'), Path('/usr/bin/chromedriver')
#: what a headless Chromium needs on a machine without a screen or a network
CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                  '--disable-background-networking', '--disable-component-update', '--disable-sync',
                  '--window-size=1280,1500']
PROMPT = 'a red circle above a blue square on a yellow background'
FAST = dict(guidance=3., steps='3', steps_up='2', sampler='ddim')

webui = load_tool('glide_webui')


# ------------------------------------------------------------ the checks
def test_prompts_are_lines_and_empty_is_refused():
    assert webui.check_prompts('  a red   circle \n\n a blue square ') == ['a red circle', 'a blue square']
    for empty in ('', '  \n \n', None):
        with pytest.raises(webui.InputError, match='enter a prompt'):
            webui.check_prompts(empty)


def test_steps_are_a_count_in_range_or_a_spec():
    assert webui.check_steps('25', 'base steps') == 25
    assert webui.check_steps(7.0, 'base steps') == 7
    assert webui.check_steps(' fast27 ', 'upsampler steps') == 'fast27'
    assert webui.check_steps('ddim50', 'base steps') == 'ddim50'
    for bad in ('0', '-3', '1001', 5000):
        with pytest.raises(webui.InputError, match='base steps must be between 1 and 1000'):
            webui.check_steps(bad, 'base steps')
    for bad in ('abc', '', None, 'fast28'):
        with pytest.raises(webui.InputError, match="upsampler steps must be a number of steps"):
            webui.check_steps(bad, 'upsampler steps')


def test_numbers_samplers_and_seeds_are_checked():
    assert webui.check_number('2.5', 'guidance scale', 0, 100) == 2.5
    assert webui.check_number(4.0, 'batch size', 1, 16, integer=True) == 4
    with pytest.raises(webui.InputError, match='guidance scale must be between 0 and 100'):
        webui.check_number(float('nan'), 'guidance scale', 0, 100)
    with pytest.raises(webui.InputError, match='batch size must be a whole number'):
        webui.check_number(1.5, 'batch size', 1, 16, integer=True)
    with pytest.raises(webui.InputError, match='seed must be a number'):
        webui.pick_seed('x', False)
    with pytest.raises(webui.InputError, match='sampler must be one of ddim, ddpm, dpmsolver'):
        webui.check_sampler('euler')
    assert webui.pick_seed(12, False) == 12
    seeds = {webui.pick_seed(0, True) for _ in range(8)}
    assert len(seeds) > 1 and all(0 <= s <= webui.MAX_SEED for s in seeds)


def test_the_runner_keeps_the_configs_upsampler_start():
    """Both tabs sample with the config's upsample_strength (the page has no control for it)."""
    from types import SimpleNamespace

    class Recorder:
        test_cfg = dict(num_inference_steps_up='ddim10', upsample_strength=0.4)
        unet, unet_up = SimpleNamespace(image_size=64), SimpleNamespace(image_size=256)
        calls = []

        def infer(self, **kwargs):
            self.calls.append(kwargs)
            return dict(samples=torch.zeros(1, 3, 256, 256))

    runner = webui.GlideRunner(Recorder())
    assert runner.defaults['upsample_strength'] == 0.4 and runner.defaults['num_inference_steps_up'] == 'ddim10'
    runner.text2im(['a red circle'], steps_up='ddim10')
    runner.inpaint('a red circle', torch.zeros(1, 3, 64, 64), torch.ones(1, 1, 64, 64))
    assert [c['upsample_strength'] for c in Recorder.calls] == [0.4, 0.4]


def scene(size=256):
    """A yellow picture with a red square in the top half."""
    img = np.zeros((size, size, 3), np.uint8)
    img[:] = (255, 255, 0)
    img[size // 8:size * 3 // 8, size // 4:size * 3 // 4] = (255, 0, 0)
    return img


def brush(size=256, rows=slice(128, None)):
    """An RGBA layer painted (opaque) over ``rows``: the part to regenerate."""
    layer = np.zeros((size, size, 4), np.uint8)
    layer[rows, :, 0] = layer[rows, :, 3] = 255
    return layer


def test_inpaint_inputs_from_brush_strokes_or_a_mask_file(tmp_path):
    image, mask, source = webui.inpaint_inputs(dict(background=scene(), layers=[brush()]), None, 64)
    assert image.shape == (1, 3, 64, 64) and mask.shape == (1, 1, 64, 64)
    assert source.size == (256, 256)
    assert torch.equal(image[0, :, 0, 0], torch.tensor([1., 1., -1.]))  # yellow in [-1, 1]
    assert mask[..., :32, :].eq(1).all() and mask[..., 32:, :].eq(0).all()  # painted = regenerate
    keep = np.zeros((256, 256), np.uint8)
    keep[:, :128] = 255  # white = keep: the left half
    Image.fromarray(keep).save(tmp_path / 'mask.png')
    _, mask, _ = webui.inpaint_inputs(dict(background=scene(), layers=[]), str(tmp_path / 'mask.png'), 64)
    assert mask[..., :32].eq(1).all() and mask[..., 32:].eq(0).all()


def test_inpaint_inputs_refuse_bad_masks_and_files(tmp_path):
    Image.fromarray(np.zeros((100, 80), np.uint8)).save(tmp_path / 'small.png')
    with pytest.raises(webui.InputError, match='the mask is 80x100 but the source image is 256x256'):
        webui.inpaint_inputs(dict(background=scene(), layers=[]), str(tmp_path / 'small.png'))
    (tmp_path / 'notes.png').write_text('not a picture')
    with pytest.raises(webui.InputError, match='the mask is not a readable image'):
        webui.inpaint_inputs(dict(background=scene(), layers=[]), str(tmp_path / 'notes.png'))
    with pytest.raises(webui.InputError, match='the mask keeps the whole image'):
        webui.inpaint_inputs(dict(background=scene(), layers=[]), None)
    with pytest.raises(webui.InputError, match='upload a source image'):
        webui.inpaint_inputs(dict(background=None, layers=[brush()]), None)


def test_a_checkpoint_that_does_not_fit_stops_the_start_with_one_line():
    proc = subprocess.run([sys.executable, 'tools/glide_webui.py', '--checkpoint',
                           'projects/glide/weights/glide_clip_tiny_shapes-64x64.pth', '--port', str(free_port())],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and 'glide_clip_tiny_shapes-64x64.pth' in errors[0], proc.stderr
    assert 'does not fit' in errors[0] and 'missing keys' in errors[0] and 'hint:' in errors[0]
    assert 'Traceback' not in proc.stderr and 'Running on' not in proc.stdout


# --------------------------------------------------------------- the app
@pytest.fixture(scope='module')
def server(tmp_path_factory):
    """URL of tools/glide_webui.py (the bundled cascade on the CPU) on a free localhost port."""
    port = free_port()
    tmp = tmp_path_factory.mktemp('webui')
    env = dict(os.environ, GRADIO_TEMP_DIR=str(tmp / 'gradio'))
    log = open(tmp / 'server.log', 'w+')  # a file, not a pipe: a full pipe would stall the server
    proc = subprocess.Popen([sys.executable, 'tools/glide_webui.py', '--port', str(port), '--device', 'cpu'],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f'http://127.0.0.1:{port}/'
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            pytest.fail(f'the web app exited with {proc.returncode}:\n{(tmp / "server.log").read_text()}')
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f'the web app did not answer on {url}:\n{(tmp / "server.log").read_text()}')
            time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@pytest.fixture(scope='module')
def client(server, tmp_path_factory):
    from gradio_client import Client
    return Client(server, verbose=False, download_files=str(tmp_path_factory.mktemp('downloads')))


def text2im(client, prompts=PROMPT, seed=0, batch=1, submit=False, **options):
    args = dict(prompt_text=prompts, negative='', batch=batch, seed=seed, randomize=False, **{**FAST, **options})
    return (client.submit if submit else client.predict)(api_name='/text2im', **args)


def pixels(path):
    with Image.open(path) as im:
        return np.asarray(im.convert('RGB'))


@pytest.fixture(scope='module')
def seed5(client):
    gallery, seed = text2im(client, seed=5)
    assert seed == 5 and len(gallery) == 1
    return pixels(gallery[0]['image'])


def test_text2im_gives_captioned_256px_images_per_prompt_and_seed(client):
    gallery, seed = text2im(client, prompts=f'{PROMPT}\n\na green triangle on a white background', seed=7)
    assert seed == 7
    assert [item['caption'] for item in gallery] == [f'{PROMPT} (seed 7)',
                                                     'a green triangle on a white background (seed 8)']
    for item in gallery:
        assert pixels(item['image']).shape == (256, 256, 3)


def test_two_requests_at_once_complete_with_their_own_seeds(client, seed5):
    jobs = [text2im(client, seed=5, submit=True), text2im(client, seed=6, submit=True)]
    done, _ = wait(jobs, timeout=300)
    assert len(done) == 2
    (gallery5, used5), (gallery6, used6) = (job.result() for job in jobs)
    assert (used5, used6) == (5, 6)
    assert np.array_equal(pixels(gallery5[0]['image']), seed5)  # the same seed, the same picture
    assert not np.array_equal(pixels(gallery6[0]['image']), seed5)


def test_inpainting_keeps_the_unpainted_part(client, tmp_path):
    from gradio_client import handle_file
    Image.fromarray(scene()).save(tmp_path / 'source.png')
    Image.fromarray(brush()).save(tmp_path / 'layer.png')
    editor = dict(background=handle_file(str(tmp_path / 'source.png')),
                  layers=[handle_file(str(tmp_path / 'layer.png'))], composite=None)
    source, result, seed = client.predict(editor=editor, mask_file=None, prompt_text=PROMPT, seed=3, randomize=False,
                                          api_name='/inpaint', **FAST)
    assert seed == 3
    assert np.array_equal(pixels(source), scene())
    result = pixels(result).astype(int)
    assert result.shape == (256, 256, 3)
    kept = np.abs(result[:96] - scene()[:96]).mean()  # the top rows, away from the mask's edge
    assert kept < 8, kept


@pytest.mark.parametrize('args, message', [
    (dict(prompt_text='  \n '), 'enter a prompt'),
    (dict(steps='0'), 'base steps must be between 1 and 1000, got 0'),
    (dict(steps_up='5000'), 'upsampler steps must be between 1 and 1000, got 5000'),
    (dict(guidance=-1), 'guidance scale must be between 0 and 100'),
])
def test_bad_text2im_input_is_a_message(client, args, message):
    from gradio_client.exceptions import AppError
    with pytest.raises(AppError, match=message):
        client.predict(api_name='/text2im', **{**dict(prompt_text=PROMPT, negative='', batch=1, seed=0,
                                                      randomize=False, **FAST), **args})


def test_bad_inpainting_input_is_a_message(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError
    Image.fromarray(scene()).save(tmp_path / 'source.png')
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / 'mask.png')
    (tmp_path / 'notes.png').write_text('not a picture')
    source = dict(background=handle_file(str(tmp_path / 'source.png')), layers=[], composite=None)
    common = dict(prompt_text=PROMPT, seed=0, randomize=False, api_name='/inpaint', **FAST)
    with pytest.raises(AppError, match='the mask is 64x64 but the source image is 256x256'):
        client.predict(editor=source, mask_file=handle_file(str(tmp_path / 'mask.png')), **common)
    with pytest.raises(AppError, match='the source image is not a readable image'):
        client.predict(editor=dict(background=handle_file(str(tmp_path / 'notes.png')), layers=[],
                                   composite=None), mask_file=None, **common)


# ----------------------------------------------------------- the browser
def test_the_page_in_headless_chromium(server, tmp_path):
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.fail(f'{CHROMIUM} and {CHROMEDRIVER} are needed for the browser test: install them with '
                    '`apt-get install -y chromium chromium-driver` (.ci/run does)')
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*CHROMIUM_FLAGS, f'--user-data-dir={tmp_path / "profile"}']:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(str(CHROMEDRIVER)), options=options)
    try:
        driver.get(server)
        until = WebDriverWait(driver, 300)
        prompt = until.until(ec.element_to_be_clickable((By.CSS_SELECTOR, '#prompt textarea')))
        prompt.clear()
        prompt.send_keys('a green triangle on a white background')
        for box, value in (('#text2im-steps textarea', '3'), ('#text2im-steps-up textarea', '2')):
            field = driver.find_element(By.CSS_SELECTOR, box)
            field.clear()
            field.send_keys(value)
        driver.find_element(By.CSS_SELECTOR, '#generate').click()
        image = until.until(ec.visibility_of_element_located((By.CSS_SELECTOR, '#gallery img')))
        until.until(lambda d: d.execute_script('return arguments[0].complete && arguments[0].naturalWidth', image))
        assert driver.execute_script('return arguments[0].naturalWidth', image) == 256
        assert 'a green triangle on a white background (seed 0)' in driver.find_element(By.ID, 'gallery').text
        shot = tmp_path / 'webui.png'
        driver.save_screenshot(str(shot))
        with Image.open(shot) as im:
            assert im.format == 'PNG' and im.size[0] >= 1000
    finally:
        driver.quit()
