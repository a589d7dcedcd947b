"""A test set made of captions only: one image is generated per caption.

Prompt files are UTF-8 text:

* ``.txt``: one caption per line; blank lines are skipped, surrounding white
  space is stripped.
* ``.json``: a list of captions, or of objects ``{"prompt": str, "seed": int}``
  (``seed`` optional), or a mix of both.

Item ``i`` is ``dict(prompt=str, index=i, seed=int)``; the seed is the one
given for the caption, else ``i + seed_offset``, so an image depends only on
its caption and seed, never on batching or on how the set is split across
processes.
"""
import json
import os.path as osp
from typing import List, Optional, Sequence, Union

from mmagic.registry import DATASETS
from torch.utils.data import Dataset

PromptEntry = Union[str, dict]


def _check_entries(entries, source: str) -> List[dict]:
    """Validate prompt entries and normalise them to ``{'prompt', 'seed'}``
    dicts (``seed`` None where not given)."""
    if not isinstance(entries, (list, tuple)):
        raise ValueError(f'{source}: expected a list of prompts, got '
                         f'{type(entries).__name__}')
    out = []
    for i, entry in enumerate(entries):
        where = f'{source}: entry {i}'
        if isinstance(entry, str):
            prompt, seed = entry, None
        elif isinstance(entry, dict):
            unknown = sorted(set(entry) - {'prompt', 'seed'})
            if unknown:
                raise ValueError(f'{where} has unknown keys {unknown}; '
                                 "allowed: 'prompt', 'seed'")
            if 'prompt' not in entry:
                raise ValueError(f"{where} has no 'prompt'")
            prompt, seed = entry['prompt'], entry.get('seed')
            if seed is not None and (isinstance(seed, bool)
                                     or not isinstance(seed, int)):
                raise ValueError(f'{where}: seed must be an integer, got '
                                 f'{seed!r}')
            if seed is not None and not 0 <= seed < 2**63:
                raise ValueError(f'{where}: seed must be in [0, 2**63), got '
                                 f'{seed}')
        else:
            raise ValueError(f'{where} must be a string or an object with '
                             f"'prompt' (and optionally 'seed'), got "
                             f'{type(entry).__name__}')
        if not isinstance(prompt, str):
            raise ValueError(f'{where}: prompt must be a string, got '
                             f'{type(prompt).__name__}')
        prompt = ' '.join(prompt.split())
        if not prompt:
            raise ValueError(f'{where}: empty prompt')
        out.append(dict(prompt=prompt, seed=seed))
    if not out:
        raise ValueError(f'{source}: no prompts (the list is empty)')
    return out


def load_prompt_file(path: str) -> List[dict]:
    """Read a ``.txt`` or ``.json`` prompt file (see the module doc).

    Returns:
        list[dict]: ``{'prompt': str, 'seed': int | None}`` per caption.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is empty, not UTF-8, not valid JSON, has an
            unsupported extension or holds something other than prompts.
    """
    path = str(path)
    if not osp.exists(path):
        raise FileNotFoundError(f'prompt file not found: {path}')
    if not osp.isfile(path):
        raise ValueError(f'prompt file is not a regular file: {path}')
    ext = osp.splitext(path)[1].lower()
    if ext not in ('.txt', '.json'):
        raise ValueError(f'prompt file must be .txt (one caption per line) '
                         f'or .json (a list), got {path}')
    try:
        with open(path, encoding='utf-8-sig') as f:
            text = f.read()
    except UnicodeDecodeError as err:
        raise ValueError(f'prompt file is not UTF-8 text: {path} ({err})') \
            from None
    if not text.strip():
        raise ValueError(f'prompt file is empty: {path}')
    if ext == '.txt':
        lines = [ln.strip() for ln in text.splitlines()]
        return _check_entries([ln for ln in lines if ln], path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f'prompt file is not valid JSON: {path} ({err})') \
            from None
    return _check_entries(data, path)


@DATASETS.register_module()
class PromptSetDataset(Dataset):
    """Captions to generate images for, one image per caption.

    Args:
        prompts (list[str | dict] | None): captions, or dicts with
            ``prompt`` and optional ``seed``.
        prompt_file (str | None): a ``.txt`` / ``.json`` prompt file (see
            :func:`load_prompt_file`). Give exactly one of ``prompts`` and
            ``prompt_file``.
        seed_offset (int): seed of item ``i`` without its own seed is
            ``i + seed_offset``.

    Items are ``dict(prompt=str, index=int, seed=int)``.
    """
    metainfo = dict(dataset_name='prompt_set')

    def __init__(self,
                 prompts: Optional[Sequence[PromptEntry]] = None,
                 prompt_file: Optional[str] = None,
                 seed_offset: int = 0):
        if (prompts is None) == (prompt_file is None):
            raise ValueError('PromptSetDataset needs exactly one of prompts '
                             'and prompt_file')
        if isinstance(seed_offset, bool) or not isinstance(seed_offset, int) \
                or seed_offset < 0:
            raise ValueError(f'seed_offset must be a non-negative int, got '
                             f'{seed_offset!r}')
        if prompt_file is not None:
            entries = load_prompt_file(prompt_file)
        else:
            if isinstance(prompts, str):
                prompts = [prompts]
            entries = _check_entries(list(prompts), 'prompts')
        self.prompt_file = prompt_file
        self.seed_offset = seed_offset
        self.prompts = [e['prompt'] for e in entries]
        self.seeds = [
            e['seed'] if e['seed'] is not None else i + seed_offset
            for i, e in enumerate(entries)
        ]

    def __len__(self) -> int:
        return len(self.prompts)

    def get_prompt(self, index: int) -> str:
        """The caption of item ``index`` (no generation)."""
        return self.prompts[index]

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f'index {index} out of range for {len(self)} '
                             'prompts')
        return dict(
            prompt=self.prompts[index], index=index, seed=self.seeds[index])
