"""1D ResNet signal encoder (ECGCLIP-R18 / -R34): leads are input channels, time is the conv axis."""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from models.config import EncoderConfig

BLOCKS_PER_STAGE: dict[str, tuple[int, int, int, int]] = {"r18": (2, 2, 2, 2), "r34": (3, 4, 6, 3)}
STAGE_STRIDES: tuple[int, int, int, int] = (1, 2, 2, 2)


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Conv1d:
    # No bias: every conv is followed by BatchNorm, whose shift makes a bias redundant.
    return nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)


class BasicBlock1d(nn.Module):
    """Two kxk convs with an identity (or 1x1 projection) shortcut, as in ResNet-18/34."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv(c_in, c_out, kernel, stride)
        self.bn1: nn.Module = nn.BatchNorm1d(c_out)  # nn.Module: fold_batchnorm swaps in an Identity
        self.conv2 = _conv(c_out, c_out, kernel)
        self.bn2: nn.Module = nn.BatchNorm1d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(_conv(c_in, c_out, 1, stride), nn.BatchNorm1d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class ResNet1d(nn.Module):
    """(B, L, N) signal -> (B, feature_dim) globally average-pooled features.

    Global pooling makes the encoder length-agnostic; the input contract (rate, length) is
    enforced by the engine against the bundle's InputSpec, not here.
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.base_width
        self.stem = nn.Sequential(
            _conv(cfg.in_leads, w, cfg.stem_kernel, stride=2),
            nn.BatchNorm1d(w),
            nn.ReLU(inplace=True),
            nn.MaxPool1d(kernel_size=3, stride=2, padding=1),
        )
        stages, c_in = [], w
        for i, (n_blocks, stride) in enumerate(zip(BLOCKS_PER_STAGE[cfg.arch], STAGE_STRIDES, strict=True)):
            c_out = w * 2**i
            stages.append(self._stage(c_in, c_out, n_blocks, stride))
            c_in = c_out
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.feature_dim = cfg.feature_dim
        self.reset_parameters()

    def _stage(self, c_in: int, c_out: int, n_blocks: int, stride: int) -> nn.Sequential:
        blocks = [BasicBlock1d(c_in, c_out, self.cfg.kernel, stride)]
        blocks += [BasicBlock1d(c_out, c_out, self.cfg.kernel, 1) for _ in range(n_blocks - 1)]
        return nn.Sequential(*blocks)

    def reset_parameters(self) -> None:
        """He init for convs; the last BN of each block starts at zero so every block starts as identity.

        Zero-init residuals (Goyal et al. 2017, torchvision's ``zero_init_residual``) make deep
        ResNets train stably from scratch with large batches, which contrastive pre-training uses.
        """
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm1d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, BasicBlock1d) and isinstance(m.bn2, nn.BatchNorm1d):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.layers(self.stem(x))).flatten(1)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval) with every Conv1d+BatchNorm1d pair folded into one biased conv.

    Inference-only: a folded BN no longer normalises with batch statistics. Engines that
    compile or capture the graph use it: fewer kernels, and the same function up to float
    rounding (parity is tested against the unfolded eager model).
    """
    folded = copy.deepcopy(model).eval()
    for m in list(folded.modules()):
        if isinstance(m, BasicBlock1d) and isinstance(m.bn1, nn.BatchNorm1d) and isinstance(m.bn2, nn.BatchNorm1d):
            m.conv1, m.bn1 = fuse_conv_bn_eval(m.conv1, m.bn1), nn.Identity()
            m.conv2, m.bn2 = fuse_conv_bn_eval(m.conv2, m.bn2), nn.Identity()
        elif isinstance(m, nn.Sequential):
            _fold_sequential(m)
    return folded


def _fold_sequential(seq: nn.Sequential) -> None:
    names = list(seq._modules)
    for a, b in itertools.pairwise(names):
        conv, bn = seq._modules[a], seq._modules[b]
        if isinstance(conv, nn.Conv1d) and isinstance(bn, nn.BatchNorm1d):
            seq._modules[a] = fuse_conv_bn_eval(conv, bn)
            seq._modules[b] = nn.Identity()
