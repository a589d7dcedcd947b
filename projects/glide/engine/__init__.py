"""Engine parts of the GLIDE project: the image saver hook, the atomic
checkpoint hook, captioned grids, device checks, CLI argument checks and the
bf16 autocast optimizer wrapper."""
from .checkpoint_hook import AtomicCheckpointHook, AtomicLocalBackend
from .devices import DeviceError, check_cuda_requests, check_device, check_launcher, setup_cpu_distributed
from .grid import captioned_grid, image_filename, prompt_slug, read_png_text, save_png
from .hooks import GlideImageSaverHook
from .optim import BF16AutocastOptimWrapper

__all__ = [
    'AtomicCheckpointHook', 'AtomicLocalBackend', 'BF16AutocastOptimWrapper', 'DeviceError',
    'GlideImageSaverHook', 'captioned_grid',
    'check_cuda_requests', 'check_device', 'check_launcher', 'image_filename',
    'prompt_slug', 'read_png_text', 'save_png', 'setup_cpu_distributed'
]
