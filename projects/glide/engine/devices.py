"""Device checks made before any work starts, and CPU-only distributed runs.

mmengine 0.10.7's ``init_dist('pytorch')`` always calls
``torch.cuda.set_device`` and its Runner wraps the model in DDP with
``device_ids=[LOCAL_RANK]``; both fail without a GPU. :func:`setup_cpu_distributed`
initialises the gloo process group itself (the Runner then skips
``init_dist``) and makes the Runner build DDP with ``device_ids=None``.
"""
import datetime
import re
from typing import Any, Iterable, Optional, Tuple

import torch

_CUDA = re.compile(r'^cuda(:(\d+))?$')


class DeviceError(RuntimeError):
    """A requested device or backend is not available on this machine."""


def _walk(value: Any, path: str) -> Iterable[Tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, f'{path}.{k}' if path else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _walk(v, f'{path}[{i}]')
    else:
        yield path, value


def check_cuda_requests(options: Optional[dict],
                        source: str = '--cfg-options') -> None:
    """Raise :class:`DeviceError` if ``options`` ask for a CUDA device (a
    value ``cuda`` / ``cuda:N``) or the ``nccl`` backend that this machine
    does not have."""
    if not options:
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for key, value in _walk(dict(options), ''):
        if not isinstance(value, str):
            continue
        text = value.strip().lower()
        m = _CUDA.match(text)
        if m:
            want = int(m.group(2) or 0)
            if count == 0:
                raise DeviceError(f'{source} {key}={value} asks for CUDA but no '
                                  'CUDA GPU is available here')
            if want >= count:
                raise DeviceError(f'{source} {key}={value} asks for GPU {want} '
                                  f'but only {count} GPU(s) are available')
        elif text == 'nccl' and count == 0:
            raise DeviceError(f'{source} {key}={value}: the nccl backend needs '
                              'CUDA GPUs and none is available here; use gloo')


def check_device(device: str) -> str:
    """Validate a ``--device`` value (``cpu``, ``cuda``, ``cuda:N``)."""
    text = str(device).strip().lower()
    if text == 'cpu':
        return 'cpu'
    m = _CUDA.match(text)
    if not m:
        raise DeviceError(f'unknown device {device!r}: use cpu, cuda or cuda:N')
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise DeviceError(f'--device {device} asks for CUDA but no CUDA GPU is '
                          'available here; use --device cpu')
    if int(m.group(2) or 0) >= count:
        raise DeviceError(f'--device {device}: only {count} GPU(s) are '
                          'available')
    return text


def dist_backend(cfg) -> str:
    env_cfg = cfg.get('env_cfg') or {}
    return str((env_cfg.get('dist_cfg') or {}).get('backend', 'nccl'))


def check_launcher(cfg, launcher: str) -> None:
    """For a distributed launch, the config's backend must work here."""
    if launcher == 'none':
        return
    backend = dist_backend(cfg)
    if backend == 'nccl' and not torch.cuda.is_available():
        raise DeviceError('env_cfg.dist_cfg.backend is nccl but no CUDA GPU is '
                          'available: pass --cfg-options env_cfg.dist_cfg.backend=gloo '
                          '(tools/dist_*.sh do this on CPU-only machines)')


def setup_cpu_distributed(cfg, launcher: str) -> bool:
    """Prepare a ``--launcher pytorch`` run on a machine without CUDA.

    Initialises the default process group with the config's backend (gloo)
    and sets ``cfg.model_wrapper_cfg`` so that DDP gets ``device_ids=None``.
    Does nothing (returns False) with a GPU or without a launcher.
    """
    if launcher == 'none' or torch.cuda.is_available():
        return False
    if launcher != 'pytorch':
        raise DeviceError(f'--launcher {launcher} without CUDA GPUs is not '
                          'supported; use --launcher pytorch (torchrun)')
    check_launcher(cfg, launcher)
    import torch.distributed as dist
    if not dist.is_initialized():
        dist_cfg = dict((cfg.get('env_cfg') or {}).get('dist_cfg') or {})
        timeout = dist_cfg.get('timeout', 1800)
        dist.init_process_group(
            backend=dist_backend(cfg),
            timeout=datetime.timedelta(seconds=int(timeout)))
    wrapper = dict(cfg.get('model_wrapper_cfg') or dict(
        type='MMDistributedDataParallel',
        broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False)))
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper
    return True

