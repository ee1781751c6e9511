"""REHRSegUNet: thick-slice pooling -> nnU-Net U-Net on the LR patch -> LR logits and an HR segmentation head.

The network takes a patch on the HR grid whose first spatial axis is the slice axis (the REHRSeg plans
transpose the data so), averages each group of r slices into one thick slice, runs a plain nnU-Net
U-Net whose topology suits that LR patch, and adds the HR head of the paper: the last decoder feature
map upsampled by r along the slice axis, conv 3x3x3 -> ReLU -> conv 5x5x5 -> HR logits of exactly the
input patch's shape. In eval mode it returns the HR logits only, so nnU-Net's sliding window, mirroring
and export work unchanged.

HR guidance (DESIGN.md, "HR guidance from the super-resolved image"): the input patch is the pseudo-HR
image in training and the super-resolved image at prediction, so the HR part may look at it directly.
``hr_guidance`` chooses how:
- ``"none"``: the paper's network, the HR head sees LR decoder features only;
- ``"stem"``: an HR stem (two conv-norm-nonlin blocks on the full-resolution input) whose features enter the
  HR head's first convolution beside the slice-upsampled decoder map;
- ``"level"``: a full-resolution U-Net level: an HR encoder stage on the input, its output pooled onto the LR
  grid and added to the first LR encoder stage (through a zero-initialised 1x1x1 conv, so fine-tuning starts
  from the LR nnU-Net's exact function), and an HR decoder stage on the slice-upsampled decoder map
  concatenated with the HR skip, then a 1x1x1 segmentation layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn
from torch.profiler import record_function

from rehrseg_nnunet.sr.carried import CarriedSRModel


def pool_thick_slices(x: torch.Tensor, scale_factor: int) -> torch.Tensor:
    """(B, C, S*r, Y, X) -> (B, C, S, Y, X): each group of r slices averaged into one thick slice."""
    b, c, s, y, x_size = x.shape
    if s % scale_factor:
        raise ValueError(f"The patch has {s} slices along the slice axis, not a multiple of r = {scale_factor}.")
    groups = x.view(b, c, s // scale_factor, scale_factor, y, x_size)
    # first + mean(offsets) equals the mean, and is bit-exact for r identical copies (a plain float mean of
    # three equal values need not be), so nearest-replicated thick slices come back exactly
    first = groups[:, :, :, :1]
    return (first + (groups - first).mean(3, keepdim=True)).squeeze(3)


def slice_upsampled_conv(features: torch.Tensor, conv: nn.Conv3d, hr_slices: int) -> torch.Tensor:
    """``conv(F.interpolate(features, (hr_slices, Y, X), mode="trilinear"))`` for a 3x3x3 conv with padding 1,
    computed without the upsampled tensor: the same values up to float rounding, r times fewer MACs.

    Upsampling along the slice axis is linear, so each HR slice of the convolved map is a weighted sum of
    in-plane convolutions of the LR slices: the conv's three kernel slices are applied once per LR slice
    (one 1x3x3 conv with 3x the output channels), then mixed by the interpolation weights, shifted for the
    conv's zero padding along the slice axis.

    Args:
        features: (B, C, S, Y, X) LR decoder map.
        conv: ``nn.Conv3d(C, O, 3, padding=1)``.
        hr_slices: slices of the HR output (r*S).

    Returns:
        (B, O, hr_slices, Y, X).
    """
    lr_slices, out_channels = features.shape[2], conv.out_channels
    kernel_slices = conv.weight.permute(2, 0, 1, 3, 4).reshape(3 * out_channels, conv.in_channels, 1, 3, 3)
    per_offset = F.conv3d(features, kernel_slices, padding=(0, 1, 1))
    per_offset = per_offset.view(features.shape[0], 3, out_channels, lr_slices, *per_offset.shape[3:])
    # interpolation weights of every LR slice for every HR slice, exactly as F.interpolate computes them
    identity = torch.eye(lr_slices, dtype=per_offset.dtype, device=per_offset.device)[None]
    weights = F.pad(F.interpolate(identity, size=hr_slices, mode="linear", align_corners=False)[0], (1, 1))
    mixing = torch.stack([weights[:, offset:offset + hr_slices] for offset in range(3)])  # (3, S, hr_slices)
    output = torch.einsum("dkn,bdokyx->bonyx", mixing, per_offset)
    return output if conv.bias is None else output + conv.bias.view(1, -1, 1, 1, 1)


#: the HR branch designs (see the module docstring)
HR_GUIDANCE_CHOICES = ("none", "stem", "level")


class REHRSegUNet(PlainConvUNet):
    """nnU-Net's PlainConvUNet on the thick-slice-pooled patch, plus the HR segmentation head.

    Args:
        input_channels, num_classes, n_stages, features_per_stage, conv_op, kernel_sizes, strides,
        n_conv_per_stage, n_conv_per_stage_decoder, conv_bias, norm_op, norm_op_kwargs, dropout_op,
        dropout_op_kwargs, nonlin, nonlin_kwargs, deep_supervision: as :class:`PlainConvUNet`, for the
            LR patch (its topology comes from the LR spacing).
        scale_factor: r, thin slices per thick slice along the first spatial axis.
        hr_head_channels: width of the HR head's hidden layer (paper: 16).
        distillation_channels: channel count of the SR teacher's features; 0 = no projection layer.
        distillation_stage: encoder stage whose output is matched against the teacher (stride 2 in-plane).
        hr_guidance: ``"none"`` (the paper's HR head), ``"stem"`` or ``"level"`` (see the module docstring).
        guidance_channels: width of the full-resolution blocks of ``"stem"`` / ``"level"`` (0 = the first stage's).

    In training mode ``forward`` returns a dict: ``lr`` (list of LR logits, full resolution first, when
    deep supervision is on; else one tensor), ``hr`` (B, K, S*r, Y, X) and ``features`` (the encoder
    output of ``distillation_stage``). In eval mode it returns the HR logits only.
    """

    def __init__(self, input_channels: int, n_stages: int, features_per_stage, conv_op, kernel_sizes, strides,
                 n_conv_per_stage, num_classes: int, n_conv_per_stage_decoder, conv_bias: bool = False,
                 norm_op=None, norm_op_kwargs: dict | None = None, dropout_op=None,
                 dropout_op_kwargs: dict | None = None,
                 nonlin=None, nonlin_kwargs: dict | None = None, deep_supervision: bool = False,
                 nonlin_first: bool = False, scale_factor: int = 4, hr_head_channels: int = 16,
                 distillation_channels: int = 0, distillation_stage: int = 1, hr_guidance: str = "none",
                 guidance_channels: int = 0):
        super().__init__(input_channels, n_stages, features_per_stage, conv_op, kernel_sizes, strides,
                         n_conv_per_stage, num_classes, n_conv_per_stage_decoder, conv_bias, norm_op, norm_op_kwargs,
                         dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs, deep_supervision, nonlin_first)
        self.scale_factor = int(scale_factor)
        self.distillation_stage = int(distillation_stage)
        first_features = features_per_stage[0] if isinstance(features_per_stage, (list, tuple)) else features_per_stage
        stage_features = (features_per_stage[distillation_stage] if isinstance(features_per_stage, (list, tuple))
                          else features_per_stage)
        layers = {"hr": nn.Sequential(
            nn.Conv3d(first_features, hr_head_channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv3d(hr_head_channels, num_classes, 5, padding=2),
        )}
        if distillation_channels:
            layers["projection"] = nn.Conv3d(stage_features, distillation_channels, 1)
        if hr_guidance not in HR_GUIDANCE_CHOICES:
            raise ValueError(f"hr_guidance is '{hr_guidance}'; choose one of {', '.join(HR_GUIDANCE_CHOICES)}.")
        self.hr_guidance = hr_guidance
        width = int(guidance_channels) or first_features
        blocks = {"conv_op": conv_op, "conv_bias": conv_bias, "norm_op": norm_op, "norm_op_kwargs": norm_op_kwargs,
                  "dropout_op": None, "dropout_op_kwargs": None, "nonlin": nonlin, "nonlin_kwargs": nonlin_kwargs,
                  "nonlin_first": nonlin_first}
        if hr_guidance != "none":
            # the full-resolution input's own features (HR stem, or the HR encoder stage of "level")
            layers["hr_encoder"] = StackedConvBlocks(2, input_channels=input_channels, output_channels=width,
                                                     kernel_size=3, initial_stride=1, **blocks)
            # the SR model that makes prediction inputs (filled by the trainer, carried in every checkpoint)
            self.carried_sr = CarriedSRModel()
        if hr_guidance == "stem":
            layers["hr_fusion"] = nn.Conv3d(width, hr_head_channels, 3, padding=1, bias=False)
        elif hr_guidance == "level":
            layers["hr"] = nn.ModuleDict({
                "from_decoder": nn.Conv3d(first_features, width, 3, padding=1, bias=False),
                "from_skip": nn.Conv3d(width, width, 3, padding=1, bias=conv_bias),
                "first": nn.Sequential(norm_op(width, **(norm_op_kwargs or {})), nonlin(**(nonlin_kwargs or {}))),
                "second": StackedConvBlocks(1, input_channels=width, output_channels=width, kernel_size=3,
                                            initial_stride=1, **blocks),
                "seg": nn.Conv3d(width, num_classes, 1),
            })
            layers["hr_to_lr"] = nn.Conv3d(width, first_features, 1, bias=False)
        # Named "…seg_layers…" on purpose: nnU-Net's -pretrained_weights loader skips keys containing
        # ".seg_layers.", and these layers have no counterpart in a stock nnU-Net checkpoint.
        self.rehrseg = nn.ModuleDict({"seg_layers": nn.ModuleDict(layers)})
        if hr_guidance == "level":  # zero: at the start the LR U-Net computes exactly what the LR nnU-Net did
            self.rehrseg["seg_layers"]["hr_to_lr"].zero_initialised = True
            self.initialize(self.rehrseg["seg_layers"]["hr_to_lr"])
        # REHRSegTrainer_noHRHead (ablation) sets this: HR logits = LR logits upsampled along the slice axis
        self.hr_from_lr = False

    @property
    def hr_head(self) -> nn.Module:
        return self.rehrseg["seg_layers"]["hr"]

    @property
    def projection(self) -> nn.Module | None:
        layers = self.rehrseg["seg_layers"]
        return layers["projection"] if "projection" in layers else None

    def _encode(self, lr: torch.Tensor, hr_features: torch.Tensor | None) -> list[torch.Tensor]:
        """The LR encoder's skips; with a full-resolution level its pooled features join the first stage."""
        if hr_features is None:
            return self.encoder(lr)
        if getattr(self.encoder, "stem", None) is not None:  # PlainConvEncoder has none; other encoders may
            lr = self.encoder.stem(lr)
        skips = []
        for s, stage in enumerate(self.encoder.stages):
            lr = stage(lr)
            if s == 0:
                lr = lr + self.rehrseg["seg_layers"]["hr_to_lr"](pool_thick_slices(hr_features, self.scale_factor))
            skips.append(lr)
        return skips

    def _hr_logits(self, features: torch.Tensor, hr_features: torch.Tensor | None, hr_slices: int) -> torch.Tensor:
        """HR logits from the last LR decoder map (upsampled along the slice axis) and the HR branch."""
        layers = self.rehrseg["seg_layers"]
        if self.hr_guidance == "level":
            level = layers["hr"]
            merged = slice_upsampled_conv(features, level["from_decoder"], hr_slices) + level["from_skip"](hr_features)
            return level["seg"](level["second"](level["first"](merged)))
        first_conv, nonlin, last_conv = self.hr_head
        hidden = slice_upsampled_conv(features, first_conv, hr_slices)
        if self.hr_guidance == "stem":
            # conv over [upsampled decoder map, stem features] = the sum of a conv over each
            hidden = hidden + layers["hr_fusion"](hr_features)
        return last_conv(nonlin(hidden))

    def forward(self, x: torch.Tensor):
        lr = pool_thick_slices(x, self.scale_factor)
        hr_features = self.rehrseg["seg_layers"]["hr_encoder"](x) if self.hr_guidance != "none" else None
        skips = self._encode(lr, hr_features if self.hr_guidance == "level" else None)
        decoder = self.decoder
        features = skips[-1]
        lr_logits = []
        for s, stage in enumerate(decoder.stages):
            features = stage(torch.cat((decoder.transpconvs[s](features), skips[-(s + 2)]), 1))
            if decoder.deep_supervision:
                lr_logits.append(decoder.seg_layers[s](features))
            elif s == len(decoder.stages) - 1:
                lr_logits.append(decoder.seg_layers[-1](features))
        if self.hr_from_lr:
            hr_logits = F.interpolate(lr_logits[-1], size=x.shape[2:], mode="trilinear", align_corners=False)
        else:
            with record_function("rehrseg.hr_head"):
                hr_logits = self._hr_logits(features, hr_features, x.shape[2])
        if not self.training:
            return hr_logits
        lr_logits = lr_logits[::-1]
        return {"lr": lr_logits if decoder.deep_supervision else lr_logits[0], "hr": hr_logits,
                "features": skips[self.distillation_stage]}

    def compute_conv_feature_map_size(self, input_size) -> int:
        lr_size = [input_size[0] // self.scale_factor, *input_size[1:]]
        return super().compute_conv_feature_map_size(lr_size)

    @staticmethod
    def initialize(module: nn.Module) -> None:
        """He initialisation (nnU-Net's), except the layers marked ``zero_initialised``."""
        if getattr(module, "zero_initialised", False):
            nn.init.zeros_(module.weight)
        else:
            InitWeights_He(1e-2)(module)
