"""Atomic file writes: every checkpoint, config, PNG and JSON file the project
writes appears whole or not at all.

An interrupted write (Ctrl-C, a killed job, a full disk) must never leave a
half file under the final name, where a later run would take it for a good
one. Each writer therefore writes a temporary file in the target's folder (so
that the rename stays on one file system) and ``os.replace``-s it into place,
which POSIX and Windows perform atomically; on any error the temporary file
is removed and the target is left as it was.
"""
import contextlib
import os
import os.path as osp
import secrets
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``.

    ``with atomic_path(out) as tmp: writer(tmp)``: the writer may be any
    function taking a file name (``torch.save``, ``PIL.Image.save``, ...).
    """
    path = os.fspath(path)
    tmp = osp.join(osp.dirname(osp.abspath(path)), f'.{osp.basename(path)}.{secrets.token_hex(4)}.part')
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the usual umask applies
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def atomic_save(obj, path: str) -> None:
    """``torch.save(obj, path)``, atomically (see :func:`atomic_path`)."""
    import torch
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def atomic_write_bytes(data: bytes, path: str) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, 'wb') as f:
        f.write(data)


def atomic_write_text(text: str, path: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(text.encode('utf-8'), path)
