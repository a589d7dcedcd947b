"""Unit tests of PromptSetDataset and the prompt-file reader."""
import json

import pytest
import torch
from mmagic.registry import DATASETS
from mmengine.dataset import default_collate

from projects.glide.datasets import PromptSetDataset, load_prompt_file


def write(path, text, encoding='utf-8'):
    path.write_bytes(text.encode(encoding))
    return str(path)


def test_txt_one_caption_per_line(tmp_path):
    f = write(tmp_path / 'p.txt',
              '\ufeffa red circle on a blue background\n\n   \n'
              '  A green square at the top, white background.  \r\n'
              'hello   world\n')
    ds = PromptSetDataset(prompt_file=f)
    assert len(ds) == 3
    assert ds.prompts == [
        'a red circle on a blue background',
        'A green square at the top, white background.', 'hello world'
    ]
    assert [ds[i] for i in range(3)] == [
        dict(prompt=ds.prompts[i], index=i, seed=i) for i in range(3)
    ]
    assert ds[-1]['index'] == 2
    with pytest.raises(IndexError):
        ds[3]


def test_json_strings_and_objects(tmp_path):
    f = write(tmp_path / 'p.json', json.dumps([
        'a red circle on a blue background',
        {'prompt': 'a blue square on a white background', 'seed': 1234},
        {'prompt': 'a yellow triangle on a black background'},
    ]))
    ds = PromptSetDataset(prompt_file=f, seed_offset=10)
    assert [it['seed'] for it in ds] == [10, 1234, 12]
    assert [it['index'] for it in ds] == [0, 1, 2]
    assert ds.get_prompt(1) == 'a blue square on a white background'
    assert load_prompt_file(f)[1] == dict(
        prompt='a blue square on a white background', seed=1234)


def test_prompts_argument_and_registry():
    ds = DATASETS.build(
        dict(type='PromptSetDataset', prompts=['a', {'prompt': 'b', 'seed': 7}]))
    assert isinstance(ds, PromptSetDataset)
    assert [ds[0], ds[1]] == [
        dict(prompt='a', index=0, seed=0),
        dict(prompt='b', index=1, seed=7)
    ]
    assert PromptSetDataset(prompts='single')[0]['prompt'] == 'single'
    assert ds.metainfo['dataset_name'] == 'prompt_set'


def test_default_collate_batches_items():
    ds = PromptSetDataset(prompts=['a', 'b', 'c'])
    batch = default_collate([ds[0], ds[2]])
    assert batch['prompt'] == ['a', 'c']
    assert torch.equal(batch['index'], torch.tensor([0, 2]))
    assert torch.equal(batch['seed'], torch.tensor([0, 2]))


def test_missing_file_error(tmp_path):
    with pytest.raises(FileNotFoundError, match='prompt file not found'):
        PromptSetDataset(prompt_file=str(tmp_path / 'nope.txt'))


@pytest.mark.parametrize('name,text,match', [
    ('e.txt', '', 'prompt file is empty'),
    ('w.txt', ' \n\n  \t\n', 'prompt file is empty'),
    ('e.json', '', 'prompt file is empty'),
    ('l.json', '[]', 'no prompts'),
    ('bad.json', '[1, 2', 'not valid JSON'),
    ('obj.json', '{"prompt": "a"}', 'expected a list'),
    ('num.json', '["a", 3]', 'entry 1 must be a string'),
    ('nokey.json', '[{"seed": 3}]', "has no 'prompt'"),
    ('extra.json', '[{"prompt": "a", "sed": 3}]', 'unknown keys'),
    ('boolseed.json', '[{"prompt": "a", "seed": true}]', 'seed must be an integer'),
    ('strseed.json', '[{"prompt": "a", "seed": "3"}]', 'seed must be an integer'),
    ('negseed.json', '[{"prompt": "a", "seed": -1}]', r'seed must be in'),
    ('blank.json', '["a", "  "]', 'entry 1: empty prompt'),
    ('p.csv', 'a\n', 'must be .txt'),
])
def test_bad_files(tmp_path, name, text, match):
    f = write(tmp_path / name, text)
    with pytest.raises(ValueError, match=match):
        PromptSetDataset(prompt_file=f)


def test_not_utf8(tmp_path):
    f = tmp_path / 'latin.txt'
    f.write_bytes('caf\xe9 au lait\n'.encode('latin-1'))
    with pytest.raises(ValueError, match='not UTF-8'):
        load_prompt_file(str(f))


def test_directory_is_not_a_prompt_file(tmp_path):
    with pytest.raises(ValueError, match='not a regular file'):
        load_prompt_file(str(tmp_path))


def test_argument_errors():
    with pytest.raises(ValueError, match='exactly one'):
        PromptSetDataset()
    with pytest.raises(ValueError, match='exactly one'):
        PromptSetDataset(prompts=['a'], prompt_file='p.txt')
    with pytest.raises(ValueError, match='no prompts'):
        PromptSetDataset(prompts=[])
    with pytest.raises(ValueError, match='seed_offset'):
        PromptSetDataset(prompts=['a'], seed_offset=-1)
