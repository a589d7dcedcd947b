"""Input checks shared by the command-line tools: each failure is one
:class:`UsageError` whose message names the path and the problem, raised
before any work (or any file) is started."""
import argparse
import math
import os.path as osp
import tempfile


class UsageError(Exception):
    """Bad input found before the tool starts working."""


def check_file(path: str, what: str) -> str:
    """``path`` must be an existing, non-empty file; returns its absolute path."""
    if not osp.exists(path):
        raise UsageError(f'{what} not found: {path}')
    if not osp.isfile(path):
        raise UsageError(f'{what} is not a file: {path}')
    if osp.getsize(path) == 0:
        raise UsageError(f'{what} is empty: {path}')
    return osp.abspath(path)


def check_writable_dir(path: str, what: str) -> str:
    """``path`` must be, or be creatable as, a writable directory (nothing is created)."""
    path = osp.abspath(path)
    if osp.exists(path):
        if not osp.isdir(path):
            raise UsageError(f'{what} {path} exists and is not a directory')
        probe = path
    else:
        probe = osp.dirname(path)
        while not osp.exists(probe):
            probe = osp.dirname(probe)
        if not osp.isdir(probe):
            raise UsageError(f'cannot create {what} {path}: {probe} is not a directory')
    try:
        tempfile.TemporaryFile(dir=probe).close()
    except OSError as err:
        raise UsageError(f'{what} {path} is not writable ({err.strerror or err})') from None
    return path


def check_checkpoint(path: str, what: str = 'checkpoint file') -> str:
    """``path`` must be an existing file that can be a PyTorch checkpoint
    (see :func:`projects.glide.checkpoint.check_checkpoint_file`: text files,
    images, random bytes and truncated files are refused without being
    unpickled); returns its absolute path."""
    from projects.glide.checkpoint import check_checkpoint_file
    path = check_file(path, what)
    try:
        return check_checkpoint_file(path)
    except (OSError, RuntimeError) as err:
        raise UsageError(str(err)) from None


def check_output_file(path: str, what: str, inputs=()) -> str:
    """``path`` must be a writable file in an existing folder and none of
    ``inputs`` (the same file, through links too: writing it would destroy
    the input); returns its absolute path. Nothing is created."""
    path = osp.abspath(path)
    if osp.isdir(path):
        raise UsageError(f'{what} {path} is a directory')
    parent = osp.dirname(path)
    if not osp.isdir(parent):
        raise UsageError(f'cannot write {what} {path}: directory {parent} does not exist')
    try:
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as err:
        raise UsageError(f'cannot write {what} {path}: {err.strerror or err}') from None
    for source in inputs:
        if source and osp.exists(source) and osp.exists(path) and osp.samefile(source, path):
            raise UsageError(f'{what} {path} is also an input ({source}): writing it would destroy the input; '
                             'choose another output file')
    return path


# ----------------------------------------------- argparse ``type=`` parsers
def positive_int(text: str) -> int:
    """An int >= 1 (batch sizes, repeats, candidates)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'not an integer: {text!r}') from None
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be >= 1, got {value}')
    return value


def finite_float(text: str) -> float:
    """A finite float (guidance scales)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'not a number: {text!r}') from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f'must be a finite number, got {text}')
    return value


def nonnegative_float(text: str) -> float:
    """A finite float >= 0 (CLIP guidance scales)."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f'must be >= 0, got {text}')
    return value


def sampling_steps(text: str):
    """'50' -> 50; respacing specs ('ddim50', 'fast27', '10,10,3') stay str;
    anything else (-3, 'abc', 0) is refused here, before any work."""
    from projects.glide.models.diffusion import respaced_timesteps
    text = str(text).strip()
    spec = int(text) if text.lstrip('+-').isdigit() else text
    if isinstance(spec, int) and spec < 1:
        raise argparse.ArgumentTypeError(f'steps must be >= 1, got {spec}')
    try:
        respaced_timesteps(spec)
    except (TypeError, ValueError) as err:
        raise argparse.ArgumentTypeError(str(err).split('. Accepted forms')[0] + ' (e.g. 50, ddim50, fast27)') \
            from None
    return spec
