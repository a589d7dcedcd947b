"""Inception-v3 pool features for FID, from a local file (nothing is downloaded):
a torchvision ``inception_v3`` state_dict, the pytorch-fid
``pt_inception-2015-12-05`` state_dict, or a TorchScript module."""
import os.path as osp
import warnings
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

_INCEPTION_HINT = (
    'GlideFID needs a local Inception network: pass '
    'inception_path=/path/to/file (a torchvision inception_v3 state_dict, the '
    'pytorch-fid pt_inception-2015-12-05 weights or a TorchScript module); '
    'nothing is downloaded')



def _fid_inception_blocks():
    """pytorch-fid's TF-compatible Inception blocks (avg pools that ignore
    padding, and a max pool in the last block)."""
    from torchvision.models.inception import InceptionA, InceptionC, InceptionE

    def avg(x):
        return F.avg_pool2d(
            x, kernel_size=3, stride=1, padding=1, count_include_pad=False)

    class FIDInceptionA(InceptionA):

        def forward(self, x):
            b1 = self.branch1x1(x)
            b5 = self.branch5x5_2(self.branch5x5_1(x))
            b3 = self.branch3x3dbl_3(
                self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            bp = self.branch_pool(avg(x))
            return torch.cat([b1, b5, b3, bp], 1)

    class FIDInceptionC(InceptionC):

        def forward(self, x):
            b1 = self.branch1x1(x)
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            bd = self.branch7x7dbl_1(x)
            for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3,
                          self.branch7x7dbl_4, self.branch7x7dbl_5):
                bd = layer(bd)
            bp = self.branch_pool(avg(x))
            return torch.cat([b1, b7, bd, bp], 1)

    class FIDInceptionE(InceptionE):
        use_max_pool = False

        def forward(self, x):
            b1 = self.branch1x1(x)
            b3 = self.branch3x3_1(x)
            b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
            bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            bd = torch.cat([self.branch3x3dbl_3a(bd),
                            self.branch3x3dbl_3b(bd)], 1)
            pooled = F.max_pool2d(x, 3, 1, 1) if self.use_max_pool else avg(x)
            bp = self.branch_pool(pooled)
            return torch.cat([b1, b3, bd, bp], 1)

    class FIDInceptionE2(FIDInceptionE):
        use_max_pool = True

    return FIDInceptionA, FIDInceptionC, FIDInceptionE, FIDInceptionE2


def _build_pytorch_fid_inception() -> nn.Module:
    from torchvision.models import inception_v3
    A, C, E1, E2 = _fid_inception_blocks()
    net = inception_v3(
        weights=None, aux_logits=False, init_weights=False, num_classes=1008)
    net.Mixed_5b = A(192, pool_features=32)
    net.Mixed_5c = A(256, pool_features=64)
    net.Mixed_5d = A(288, pool_features=64)
    net.Mixed_6b = C(768, channels_7x7=128)
    net.Mixed_6c = C(768, channels_7x7=160)
    net.Mixed_6d = C(768, channels_7x7=160)
    net.Mixed_6e = C(768, channels_7x7=192)
    net.Mixed_7b = E1(1280)
    net.Mixed_7c = E2(2048)
    return net


class InceptionFeatures(nn.Module):
    """Pool features of a local Inception file; ``forward`` takes uint8-range
    (N, 3, H, W) RGB float tensors and returns (N, D) float64 features.

    * torchvision ``inception_v3`` state_dict (ImageNet normalisation) or the
      pytorch-fid ``pt_inception`` state_dict (1008 classes, no AuxLogits;
      inputs scaled to [-1, 1]): images are resized to 299 x 299 (bilinear)
      and the 2048-d average-pooled features before ``fc`` are returned;
    * TorchScript: if ``forward`` takes ``return_features`` (the StyleGAN /
      clean-fid ``inception-2015-12-05.pt``), it gets the raw [0, 255] images
      and ``return_features=True``; otherwise it gets 299 x 299 images in
      [-1, 1] and must return (N, D) or (N, D, 1, 1) features.
    """

    def __init__(self, inception_path, device='cpu') -> None:
        super().__init__()
        if inception_path is None:
            raise ValueError(f'inception_path is None. {_INCEPTION_HINT}.')
        path = osp.expanduser(str(inception_path))
        if not osp.isfile(path):
            what = 'a folder' if osp.isdir(path) else 'missing'
            raise FileNotFoundError(
                f'inception_path {path!r} is {what}. {_INCEPTION_HINT}.')
        self.path = path
        self.kind, self.net = self._load(path)
        self.net.eval().to(device)  # forward() runs under no_grad
        self.device = torch.device(device)

    @staticmethod
    def _load(path: str) -> Tuple[str, nn.Module]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore', FutureWarning)
                return _script_kind(torch.jit.load(path, map_location='cpu'))
        except Exception:  # noqa: BLE001 -- not TorchScript; try a state_dict
            pass
        try:
            state = torch.load(path, map_location='cpu', weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise ValueError(
                f'{path!r} is neither TorchScript nor a torch.save()d '
                f'state_dict ({type(e).__name__}: {e}). {_INCEPTION_HINT}.'
            ) from e
        if isinstance(state, dict):
            for key in ('state_dict', 'model'):
                if isinstance(state.get(key), dict):
                    state = state[key]
                    break
        if not isinstance(state, dict) or not all(
                isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(f'{path!r} does not hold a state_dict of '
                             f'tensors. {_INCEPTION_HINT}.')
        if state and all(k.startswith('module.') for k in state):
            state = {k[len('module.'):]: v for k, v in state.items()}
        fc = state.get('fc.weight')
        if fc is None or 'Mixed_7c.branch_pool.conv.weight' not in state:
            raise ValueError(f'{path!r} is not an Inception-v3 state_dict '
                             f'(no fc / Mixed_7c weights). {_INCEPTION_HINT}.')
        if fc.shape[0] == 1008 and not any(
                k.startswith('AuxLogits.') for k in state):
            kind, net = 'pytorch-fid', _build_pytorch_fid_inception()
        else:
            from torchvision.models import inception_v3
            aux = any(k.startswith('AuxLogits.') for k in state)
            kind = 'torchvision'
            net = inception_v3(
                weights=None,
                aux_logits=aux,
                init_weights=False,
                num_classes=fc.shape[0])
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ValueError(f'{path!r} does not match the {kind} Inception-v3 '
                             f'architecture: {e}. {_INCEPTION_HINT}.') from e
        net.fc = nn.Identity()  # forward() now returns the pool features
        return kind, net

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, torch.float32)
        if self.kind == 'script-features':
            feats = self.net(x, return_features=True)
        else:
            x = F.interpolate(
                x, size=(299, 299), mode='bilinear', align_corners=False)
            x = x / 255
            if self.kind == 'torchvision':
                mean = x.new_tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
                std = x.new_tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
                x = (x - mean) / std
            else:
                x = 2 * x - 1
            feats = self.net(x)
            if isinstance(feats, tuple):  # (logits, aux) in train mode
                feats = feats[0]
        return feats.reshape(feats.shape[0], -1).double().cpu()


def _script_kind(module) -> Tuple[str, nn.Module]:
    try:
        schema = str(module.forward.schema)
    except Exception:  # noqa: BLE001
        schema = ''
    kind = 'script-features' if 'return_features' in schema else 'script'
    return kind, module
