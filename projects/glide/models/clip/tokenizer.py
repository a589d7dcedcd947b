"""The CLIP tokenizer of GLIDE's noise-aware CLIP: byte-level BPE with end-of-word marks.

The merge list ships with this package under ``projects/glide/data/clip-bpe``
(MIT, see NOTICE.md there); nothing is downloaded. The algorithm is CLIP's
(Radford et al., 2021) as used by openai/glide-text2im (MIT) for CLIP
guidance: the text is cleaned (ftfy, HTML unescaped twice, whitespace
collapsed, lower-cased), split into contractions, letter runs, single digits
and symbol runs, each piece mapped byte-by-byte to printable characters (the
GPT-2 table) with ``</w>`` on its last symbol, then merged by merge rank.
Padding: ``<|startoftext|>``, at most ``text_ctx - 2`` ids, ``<|endoftext|>``,
then zeros; the length counts start and end tokens (the text encoder reads its
feature at position ``len - 1``).
"""
import gzip
import html
import os.path as osp
from typing import List, Sequence, Tuple, Union

import ftfy
import regex
import torch
from mmagic.registry import MODELS

from ..tokenizer import _byte_to_unicode, merge_symbols, warn_truncated

DEFAULT_CLIP_BPE = osp.join(osp.dirname(osp.dirname(osp.dirname(__file__))), 'data', 'clip-bpe',
                            'bpe_simple_vocab_16e6.txt.gz')
START, END = '<|startoftext|>', '<|endoftext|>'
# line 0 of the merge file is a header; CLIP uses the next 49152 - 256 - 2 merges
_NUM_MERGES = 49152 - 256 - 2
_PIECES = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
                        r"""[^\s\p{L}\p{N}]+""", regex.IGNORECASE)
_SPACES = regex.compile(r'\s+')


def clean_text(text: str) -> str:
    """CLIP's text normalisation: ftfy repair, HTML unescaped twice, whitespace
    runs collapsed to one space and stripped, lower case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _SPACES.sub(' ', text).strip().lower()


@MODELS.register_module()
class GlideCLIPTokenizer:
    """CLIP BPE tokenizer with the padding of GLIDE's noise-aware CLIP.

    Args:
        bpe_path (str): the gzipped merge list. Defaults to the one shipped
            with this package.
        text_ctx (int): token positions after padding (77, the CLIP text
            encoder's context); at most ``text_ctx - 2`` BPE ids are kept.
    """

    pad_token = 0

    def __init__(self, bpe_path: str = DEFAULT_CLIP_BPE, text_ctx: int = 77):
        if not osp.isfile(bpe_path):
            raise FileNotFoundError(f'CLIP tokenizer merge list not found: {bpe_path}')
        if isinstance(text_ctx, bool) or not isinstance(text_ctx, int) or text_ctx < 2:
            raise ValueError(f'text_ctx must be an int >= 2 (start and end tokens), got {text_ctx!r}')
        with gzip.open(bpe_path, 'rt', encoding='utf-8') as f:
            lines = f.read().split('\n')[1:_NUM_MERGES + 1]
        merges = [tuple(line.split()) for line in lines]
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.byte_encoder = _byte_to_unicode()
        # CLIP lists the byte symbols printable bytes first, the remapped ones
        # (chr(256 + n)) after: that is code point order
        symbols = sorted(self.byte_encoder.values())
        vocab = symbols + [s + '</w>' for s in symbols] + [a + b for a, b in merges] + [START, END]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.text_ctx = text_ctx
        self._cache = {START: [START], END: [END]}

    @property
    def start_token(self) -> int:
        """Id of ``<|startoftext|>`` (49406)."""
        return self.encoder[START]

    @property
    def end_token(self) -> int:
        """Id of ``<|endoftext|>`` (49407)."""
        return self.encoder[END]

    def _bpe(self, piece: str) -> List[str]:
        if piece not in self._cache:
            symbols = [self.byte_encoder[b] for b in piece.encode('utf-8')]
            symbols[-1] += '</w>'
            self._cache[piece] = merge_symbols(symbols, self.ranks)
        return self._cache[piece]

    def encode(self, text: str) -> List[int]:
        """BPE ids of ``text`` after :func:`clean_text`, no start/end/padding."""
        if not isinstance(text, str):
            raise TypeError(f'prompt must be a str, got {type(text).__name__}')
        return [self.encoder[token] for piece in _PIECES.findall(clean_text(text))
                for token in self._bpe(piece)]

    def padded_tokens_and_len(self, ids: Sequence[int]) -> Tuple[List[int], int]:
        """Start token, the first ``text_ctx - 2`` ids, end token, zeros up to
        ``text_ctx``; and the length including start and end. Longer prompts
        are cut, with a warning."""
        warn_truncated(len(ids), self.text_ctx - 2, "the CLIP's text encoder")
        tokens = [self.start_token] + list(ids)[:self.text_ctx - 2] + [self.end_token]
        return tokens + [self.pad_token] * (self.text_ctx - len(tokens)), len(tokens)

    def __call__(self, prompts: Union[str, Sequence[str]],
                 device: Union[str, torch.device] = 'cpu') -> Tuple[torch.Tensor, torch.Tensor]:
        """Tokenize a prompt or a list of prompts.

        Returns:
            tuple: ``tokens`` (B, text_ctx) int64 and ``lens`` (B,) int64 in
            [2, text_ctx].
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        rows = [self.padded_tokens_and_len(self.encode(p)) for p in prompts]
        tokens = torch.tensor([r[0] for r in rows], dtype=torch.long, device=device)
        lens = torch.tensor([r[1] for r in rows], dtype=torch.long, device=device)
        return tokens, lens
