"""GLIDE's text tokenizer: GPT-2 byte-level BPE, padded to a fixed context.

The BPE tables (``encoder.json.gz``, ``vocab.bpe.gz``) ship with this package
under ``projects/glide/data/gpt2-bpe`` (MIT, see NOTICE.md there); nothing is
downloaded. The algorithm is GPT-2's byte-level BPE (Radford et al., 2019) as
used by openai/glide-text2im: text is split with GPT-2's pre-tokenisation
pattern, every piece is mapped byte-by-byte to printable unicode characters,
then merged greedily by merge rank. Padding follows GLIDE: truncate to
``text_ctx`` tokens, pad with ``<|endoftext|>`` (id 50256), mask True on real
tokens.
"""
import gzip
import json
import os.path as osp
import warnings
from functools import lru_cache
from typing import Dict, List, Sequence, Tuple, Union

import regex
import torch
from mmagic.registry import MODELS

DEFAULT_BPE_DIR = osp.join(osp.dirname(osp.dirname(__file__)), 'data', 'gpt2-bpe')

# GPT-2's pre-tokenisation pattern: contractions, letter runs, digit runs,
# other symbol runs, each with an optional leading space; then whitespace.
_PRETOKENIZE = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


@lru_cache()
def _byte_to_unicode() -> dict:
    """Map the 256 byte values to printable unicode characters (GPT-2)."""
    printable = (list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1)) +
                 list(range(ord('®'), ord('ÿ') + 1)))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def warn_truncated(num_tokens: int, limit: int, model: str) -> None:
    """Warn that a prompt of ``num_tokens`` BPE tokens loses all past ``limit``
    (the ``model``'s context): the dropped words change nothing in the image."""
    if num_tokens > limit:
        warnings.warn(f'prompt is {num_tokens} tokens long but {model} reads at most {limit}: the last '
                      f'{num_tokens - limit} tokens are dropped', stacklevel=4)


def merge_symbols(symbols: List[str], ranks: Dict[Tuple[str, str], int]) -> List[str]:
    """Merge adjacent symbols, best-ranked pair first, every occurrence of that
    pair left to right, until no ranked pair remains (byte-pair encoding)."""
    symbols = list(symbols)
    while len(symbols) > 1:
        pair = min(zip(symbols, symbols[1:]), key=lambda p: ranks.get(p, len(ranks)))
        if pair not in ranks:
            return symbols
        i = 0
        while i < len(symbols) - 1:
            if (symbols[i], symbols[i + 1]) == pair:
                symbols[i:i + 2] = [pair[0] + pair[1]]  # a merged symbol never starts the pair again
            i += 1
    return symbols


@MODELS.register_module()
class GlideTokenizer:
    """GPT-2 BPE tokenizer with GLIDE's padding.

    Args:
        bpe_dir (str): folder holding ``encoder.json.gz`` and ``vocab.bpe.gz``.
            Defaults to the tables shipped with this package.
        text_ctx (int): number of token positions after padding. Default 128.
    """

    def __init__(self, bpe_dir: str = DEFAULT_BPE_DIR, text_ctx: int = 128):
        encoder_path = osp.join(bpe_dir, 'encoder.json.gz')
        merges_path = osp.join(bpe_dir, 'vocab.bpe.gz')
        for path in (encoder_path, merges_path):
            if not osp.isfile(path):
                raise FileNotFoundError(f'GLIDE tokenizer table not found: {path}')
        with gzip.open(encoder_path, 'rt', encoding='utf-8') as f:
            self.encoder = json.load(f)
        with gzip.open(merges_path, 'rt', encoding='utf-8') as f:
            lines = f.read().split('\n')[1:]  # first line is a version header
        merges = [tuple(line.split()) for line in lines if line.strip()]
        self.merge_ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.byte_encoder = _byte_to_unicode()
        self.text_ctx = text_ctx
        self._cache = {}

    @property
    def n_vocab(self) -> int:
        return len(self.encoder)

    @property
    def end_token(self) -> int:
        """Id of ``<|endoftext|>`` (50256), GLIDE's padding token."""
        return self.encoder['<|endoftext|>']

    def _bpe(self, piece: str) -> List[str]:
        if piece in self._cache:
            return self._cache[piece]
        word = merge_symbols(list(piece), self.merge_ranks)
        self._cache[piece] = word
        return word

    def encode(self, text: str) -> List[int]:
        """BPE ids of ``text`` (lower-cased, like GLIDE), no padding."""
        if not isinstance(text, str):
            raise TypeError(f'prompt must be a str, got {type(text).__name__}')
        ids = []
        for piece in _PRETOKENIZE.findall(text.lower()):
            mapped = ''.join(self.byte_encoder[b] for b in piece.encode('utf-8'))
            ids.extend(self.encoder[token] for token in self._bpe(mapped))
        return ids

    def padded_tokens_and_mask(self, tokens: Sequence[int]) -> Tuple[List[int], List[bool]]:
        """Truncate to ``text_ctx`` (with a warning) and pad with the end token; mask is True on real tokens."""
        warn_truncated(len(tokens), self.text_ctx, "GLIDE's text encoder")
        tokens = list(tokens)[:self.text_ctx]
        pad = self.text_ctx - len(tokens)
        return tokens + [self.end_token] * pad, [True] * len(tokens) + [False] * pad

    def __call__(self, prompts: Union[str, Sequence[str]],
                 device: Union[str, torch.device] = 'cpu') -> Tuple[torch.Tensor, torch.Tensor]:
        """Tokenize a prompt or a list of prompts.

        Returns:
            tuple: ``tokens`` (B, text_ctx) int64 and ``mask`` (B, text_ctx) bool.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        rows = [self.padded_tokens_and_mask(self.encode(p)) for p in prompts]
        tokens = torch.tensor([r[0] for r in rows], dtype=torch.long, device=device)
        mask = torch.tensor([r[1] for r in rows], dtype=torch.bool, device=device)
        return tokens, mask
