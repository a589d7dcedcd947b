"""Training checkpoints written atomically.

mmengine's ``CheckpointHook`` writes ``iter_N.pth`` in place through its file
backend, so a run killed while it writes leaves a half (often empty) file
that a later ``--resume`` takes for the latest checkpoint.
:class:`AtomicCheckpointHook` is that hook with the local file backend
replaced by :class:`AtomicLocalBackend`, whose writes go to a temporary file
in the same folder that is then renamed into place: a checkpoint file is
whole or absent. (``last_checkpoint``, the few-byte pointer mmengine writes
after the checkpoint, is left to mmengine; ``tools/train.py --resume`` falls
back to the newest intact ``iter_N.pth`` when it is damaged.)
"""
import os
import os.path as osp
from typing import Optional, Union

from mmagic.registry import HOOKS
from mmengine.fileio.backends import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook

from projects.glide.fileio import atomic_write_bytes

#: the name of :class:`AtomicLocalBackend` in mmengine's backend registry (``backend_args``)
ATOMIC_BACKEND = 'glide_atomic_local'


@register_backend(ATOMIC_BACKEND, force=True)
class AtomicLocalBackend(LocalBackend):
    """mmengine's ``LocalBackend`` whose ``put``/``put_text`` write atomically."""

    def put(self, obj: bytes, filepath: Union[str, os.PathLike]) -> None:
        os.makedirs(osp.dirname(osp.abspath(filepath)), exist_ok=True)
        atomic_write_bytes(obj, filepath)

    def put_text(self, obj: str, filepath: Union[str, os.PathLike], encoding: str = 'utf-8') -> None:
        self.put(obj.encode(encoding), filepath)


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """``CheckpointHook`` (same arguments) whose checkpoints are written
    atomically to a local ``out_dir`` (the default: the work dir).

    Args:
        backend_args (dict | None): as ``CheckpointHook``'s; None selects the
            atomic local backend unless ``out_dir`` is a URI (``s3://...``)
            or ``file_client_args`` is given, which keep mmengine's choice.
    """

    def __init__(self, *args, out_dir: Optional[str] = None, backend_args: Optional[dict] = None,
                 file_client_args: Optional[dict] = None, **kwargs):
        local = out_dir is None or '://' not in str(out_dir)
        if backend_args is None and file_client_args is None and local:
            backend_args = dict(backend=ATOMIC_BACKEND)
        super().__init__(*args, out_dir=out_dir, backend_args=backend_args, file_client_args=file_client_args,
                         **kwargs)
