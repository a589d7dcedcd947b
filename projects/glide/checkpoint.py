"""Loading checkpoints safely and refusing the ones that do not fit.

Two gaps in the stack are closed here:

* torch >= 2.6 loads with ``weights_only=True``; mmengine 0.10.7 does not
  adapt, so files whose ``meta`` holds numpy values or a Runner's message hub
  (every checkpoint mmengine's own Runner saves, hence ``--resume``) fail with
  an obscure ``UnpicklingError``. We register a local-file loader that keeps
  ``weights_only=True`` and allow-lists the few known-safe types those files
  contain, and that names the file and the problem when loading fails
  (missing, truncated, not a torch file, unknown pickled type): one
  "X is not a PyTorch checkpoint (...)" for anything that is not one.
* mmengine's ``load_checkpoint`` (used by ``mmagic.apis.init_model``) is not
  strict by default: a checkpoint that does not fit only logs a warning and
  leaves a silently random model. :class:`Glide` calls
  :func:`check_state_dict` on every load, which raises
  :class:`CheckpointMismatchError` naming missing, unexpected and mis-shaped
  keys, with a hint at the likely cause (wrong stage, openai layout,
  inpainting checkpoint), and :class:`NonFiniteCheckpointError` naming the
  first weight that holds NaN or inf.
"""
import os.path as osp
import pickle
import zipfile
from typing import Dict, List, Tuple

import numpy as np
import torch
from mmengine.runner.checkpoint import CheckpointLoader


class CheckpointMismatchError(RuntimeError):
    """A checkpoint's keys or shapes do not fit the model built from the config."""


class NonFiniteCheckpointError(RuntimeError):
    """A checkpoint's weights hold NaN or inf."""


def _safe_globals() -> list:
    """Types found in mmengine Runner checkpoints that are safe to unpickle.

    ``getattr`` appears because a Runner's ``HistoryBuffer`` pickles its
    statistics methods as ``getattr(HistoryBuffer, 'min')``; the weights-only
    unpickler still refuses to *call* anything not on this list, so fetching
    an attribute grants nothing more. ``_codecs.encode`` rebuilds numpy bytes.
    """
    import _codecs

    from mmengine.logging.history_buffer import HistoryBuffer
    safe = [HistoryBuffer, np.ndarray, np.dtype, np.core.multiarray._reconstruct,
            np.core.multiarray.scalar, getattr, _codecs.encode]
    safe += [type(np.dtype(t)) for t in ('float64', 'float32', 'float16', 'int64', 'int32', 'bool')]
    return safe


#: file signatures named in "is not a PyTorch checkpoint" errors
_SIGNATURES = ((b'\x89PNG', 'a PNG image'), (b'\xff\xd8\xff', 'a JPEG image'), (b'GIF8', 'a GIF image'),
               (b'%PDF', 'a PDF document'), (b'\x1f\x8b', 'a gzip file'), (b'\x93NUMPY', 'a numpy .npy file'))


def _not_a_checkpoint(filename: str, why: str) -> RuntimeError:
    return RuntimeError(f'{filename} is not a PyTorch checkpoint ({why})')


def _first_line(err: BaseException) -> str:
    return (str(err).strip().split('\n')[0].split('. ')[0] or type(err).__name__).rstrip('.')


def check_checkpoint_file(filename: str) -> str:
    """Cheap checks, without unpickling, that ``filename`` can be a PyTorch
    checkpoint: an existing non-empty file that is a complete zip archive
    (``torch.save``'s format; a truncated file has lost its central
    directory) or a pickle (the legacy format). Returns ``filename``.

    Raises:
        FileNotFoundError: no such file.
        RuntimeError: the file is empty, truncated, or something else (a text
            file, an image, random bytes), named in the message
            "X is not a PyTorch checkpoint (...)".
    """
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint file not found: {filename}')
    if osp.getsize(filename) == 0:
        raise RuntimeError(f'checkpoint file is empty: {filename}')
    with open(filename, 'rb') as f:
        head = f.read(512)
    if head.startswith(b'PK\x03\x04'):
        try:
            zipfile.ZipFile(filename).close()
        except (zipfile.BadZipFile, OSError) as err:
            raise _not_a_checkpoint(filename, f'it is truncated or not a PyTorch file: {_first_line(err)}') \
                from None
        return filename
    if head.startswith(b'\x80'):  # a pickle: torch.save's legacy format
        return filename
    kind = next((name for magic, name in _SIGNATURES if head.startswith(magic)), None)
    if kind is None and not any(b < 9 or 13 < b < 32 for b in head):  # no control characters
        kind = 'a text file'
    if kind is None:
        raise _not_a_checkpoint(filename, f'its first bytes {head[:4].hex(" ")} start neither a zip archive '
                                'nor a pickle')
    raise _not_a_checkpoint(filename, f'it is {kind}')


def load_checkpoint_file(filename: str, map_location=None) -> dict:
    """``torch.load`` with ``weights_only=True`` and errors that name the file
    and say what is wrong (see :func:`check_checkpoint_file`); never advises
    loading with ``weights_only=False``."""
    check_checkpoint_file(filename)
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        detail = next((line.strip() for line in str(err).split('\n') if 'WeightsUnpickler error' in line),
                      _first_line(err))
        raise RuntimeError(f'checkpoint {filename} holds objects that are not known to be safe to '
                           f'load ({detail}); re-save it as a plain state dict') from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, IndexError, KeyError, ValueError, TypeError,
            AttributeError, UnicodeDecodeError) as err:
        raise _not_a_checkpoint(filename, f'it is truncated or not a PyTorch file: {_first_line(err)}') from None


@CheckpointLoader.register_scheme(prefixes='', force=True)
def load_from_local_weights_only(filename, map_location):
    """mmengine's loader of local files, through :func:`load_checkpoint_file`
    (mmengine logs the name after ``load_from_``: 'local_weights_only backend')."""
    return load_checkpoint_file(osp.expanduser(filename), map_location)


def _preview(keys: List[str], n: int = 6) -> str:
    shown = ', '.join(keys[:n])
    return shown + (f', ... ({len(keys)} in all)' if len(keys) > n else '')


def check_state_dict(expected: Dict[str, torch.Size], state_dict: Dict[str, torch.Tensor]) -> None:
    """Raise :class:`CheckpointMismatchError` unless keys and shapes match
    exactly, then :class:`NonFiniteCheckpointError` if a weight holds NaN or inf.

    Args:
        expected (dict): key -> shape of the model (``{k: v.shape for k, v in
            model.state_dict().items()}``).
        state_dict (dict): key -> tensor of the checkpoint.
    """
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    misshaped = sorted(k for k in set(expected) & set(state_dict)
                       if tuple(state_dict[k].shape) != tuple(expected[k]))
    if not (missing or unexpected or misshaped):
        check_finite(state_dict)
        return
    lines = ['the checkpoint does not fit the model built from the config:']
    if missing:
        lines.append(f'  missing keys: {_preview(missing)}')
    if unexpected:
        lines.append(f'  unexpected keys: {_preview(unexpected)}')
    for key in misshaped[:6]:
        lines.append(f'  shape mismatch for {key}: checkpoint {tuple(state_dict[key].shape)}, '
                     f'model {tuple(expected[key])}')
    if len(misshaped) > 6:
        lines.append(f'  ... {len(misshaped)} shape mismatches in all')
    lines += _hints(expected, state_dict, missing, unexpected)
    raise CheckpointMismatchError('\n'.join(lines))


def check_finite(state_dict: Dict[str, torch.Tensor]) -> None:
    """Raise :class:`NonFiniteCheckpointError` naming the first floating tensor
    of ``state_dict`` (in its order) that holds NaN or inf: such weights load
    silently and turn every sample into NaN (a black image)."""
    bad = [k for k, v in state_dict.items()
           if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f' (and {len(bad) - 1} more tensors)' if len(bad) > 1 else ''
        raise NonFiniteCheckpointError(f'the checkpoint holds NaN or inf values in {bad[0]}{more}: '
                                       'it comes from a diverged or damaged run')


def complete_state_dict(model_state: Dict[str, torch.Tensor],
                        state_dict: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Fill the keys a checkpoint lacks from a freshly built model, for
    fine-tuning a model that gained blocks (e.g. ``attention_position``).

    Args:
        model_state (dict): the new model's ``state_dict()`` (its initial values).
        state_dict (dict): the checkpoint's weights.

    Returns:
        tuple: the completed state dict and the sorted keys taken from
        ``model_state``.

    Raises:
        CheckpointMismatchError: the checkpoint has keys the model lacks or
            shapes that differ (adding blocks is fine; anything else is not).
    """
    added = sorted(set(model_state) - set(state_dict))
    completed = {**{k: model_state[k] for k in added}, **state_dict}
    check_state_dict({k: v.shape for k, v in model_state.items()}, completed)
    return completed, added


def _hints(expected, state_dict, missing, unexpected) -> List[str]:
    hints = []
    if any(k.startswith('input_blocks.') for k in state_dict):
        hints.append('hint: this is openai\'s key layout; convert it first with '
                     'tools/model_converters/glide_openai_to_mmagic.py')
    if any(k.startswith('unet_up.') for k in unexpected):
        hints.append('hint: the checkpoint holds an upsampler (unet_up.*) but the config has '
                     'none: use the 64-256 config')
    if any(k.startswith('unet_up.') for k in missing) and not any(
            k.startswith('unet_up.') for k in state_dict):
        hints.append('hint: the config has an upsampler (unet_up.*) but the checkpoint has none: '
                     'use the 64x64 config, or a checkpoint holding both stages')
    key = 'unet.in_blocks.0.0.weight'
    if key in state_dict and key in expected and state_dict[key].shape[1] != expected[key][1]:
        kinds = {3: 'a text-to-image base', 6: 'an upsampler', 7: 'a base inpainting',
                 10: 'an upsampling inpainting'}
        hints.append(f'hint: the checkpoint\'s unet takes {state_dict[key].shape[1]} input channels '
                     f'({kinds.get(state_dict[key].shape[1], "an unknown")} model) but the config '
                     f'builds one with {expected[key][1]}')
    return hints
