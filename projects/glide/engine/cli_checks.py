"""Input checks shared by the command-line tools: each failure is one
:class:`UsageError` whose message names the path and the problem, raised
before any work (or any file) is started."""
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
