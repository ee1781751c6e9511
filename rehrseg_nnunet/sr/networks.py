"""Self-SR networks, built from plain constructor kwargs (so a JSON config rebuilds them).

* :class:`PlaneSRNet` — stage 1a, a WDSR-style 2D network (SMORE): upsamples the first spatial
  axis of a 2D plane by r with a one-axis pixel shuffle.
* :class:`SliceInterpolationNet` — stages 1b/1c, a FLAVR-style 3D encoder-decoder over k = 4
  consecutive LR slices ("frames") that outputs the r HR slices between the middle two. With
  ``num_attention_maps > 0`` its head is the UASR head (M reconstructions, softmax attention,
  uncertainty = sigmoid(1x1 conv of the attention maps)).

Both predict a residual on top of linear interpolation, so an untrained network already equals
linear interpolation of the image and of the one-hot label.

Channel layout everywhere: ``image_channels`` intensities, then ``num_classes`` one-hot label
channels (input) or label logits (output).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

#: Logit scale of the label prior: softmax(LABEL_PRIOR_SCALE * p) has the argmax of p.
LABEL_PRIOR_SCALE = 6.0
NUM_FRAMES = 4
#: sigma of the UASR head before training (a typical per-voxel error of a normalised image, ~0.05).
INITIAL_SIGMA = 0.05


def shuffle_first_axis(x: torch.Tensor, channels: int, scale_factor: int) -> torch.Tensor:
    """(B, C*r, H, W) -> (B, C, H*r, W): pixel shuffle along the first spatial axis only."""
    b, _, h, w = x.shape
    return x.view(b, channels, scale_factor, h, w).permute(0, 1, 3, 2, 4).reshape(b, channels, h * scale_factor, w)


def label_prior(probabilities: torch.Tensor) -> torch.Tensor:
    """Turn interpolated one-hot labels into logits with the same argmax."""
    return LABEL_PRIOR_SCALE * (probabilities - 0.5)


class WDSRBlock(nn.Module):
    """WDSR-A residual block: wide activation, weight-normalised 3x3 convs."""

    def __init__(self, features: int, expansion: int, residual_scale: float = 1.0):
        super().__init__()
        self.body = nn.Sequential(
            weight_norm(nn.Conv2d(features, features * expansion, 3, padding=1)),
            nn.ReLU(inplace=True),
            weight_norm(nn.Conv2d(features * expansion, features, 3, padding=1)),
        )
        self.residual_scale = residual_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.residual_scale * self.body(x)


class PlaneSRNet(nn.Module):
    """Stage 1a: 2D SMORE/WDSR network; upsamples axis 2 of (B, C, H, W) by ``scale_factor``.

    Args:
        image_channels: number of MRI contrasts.
        num_classes: number of one-hot label channels (0 for image only).
        scale_factor: r.
        features: width of the residual body (authors: 32).
        num_blocks: residual blocks (authors: 16).
        expansion: wide-activation factor of each block.
    """

    def __init__(self, image_channels: int, num_classes: int, scale_factor: int, features: int = 32,
                 num_blocks: int = 16, expansion: int = 4):
        super().__init__()
        self.image_channels = image_channels
        self.num_classes = num_classes
        self.scale_factor = scale_factor
        channels = image_channels + num_classes
        self.head = weight_norm(nn.Conv2d(channels, features, 3, padding=1))
        self.body = nn.Sequential(*[WDSRBlock(features, expansion) for _ in range(num_blocks)])
        self.tail = weight_norm(nn.Conv2d(features, channels * scale_factor, 3, padding=1))
        self.skip = weight_norm(nn.Conv2d(channels, channels * scale_factor, 5, padding=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = self.image_channels + self.num_classes
        residual = self.tail(self.body(self.head(x))) + self.skip(x)
        residual = shuffle_first_axis(residual, channels, self.scale_factor)
        # cell-centred linear interpolation (align_corners=False): the HR grid convention
        base = F.interpolate(x, scale_factor=(self.scale_factor, 1), mode="bilinear", align_corners=False)
        base = torch.cat([base[:, : self.image_channels], label_prior(base[:, self.image_channels:])], 1)
        return base + residual


class SEGate(nn.Module):
    """Squeeze-excitation gating: global average -> 1x1x1 conv -> sigmoid -> scale."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc = nn.Conv3d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc(F.adaptive_avg_pool3d(x, 1)))


class ResidualBlock3D(nn.Module):
    """3D ResNet basic block with SE gating; stride is applied in-plane only."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        s = (1, stride, stride)
        self.conv_a = nn.Conv3d(in_channels, out_channels, 3, stride=s, padding=1)
        self.conv_b = nn.Conv3d(out_channels, out_channels, 3, padding=1)
        self.gate = SEGate(out_channels)
        self.shortcut = (nn.Conv3d(in_channels, out_channels, 1, stride=s, bias=False)
                         if stride != 1 or in_channels != out_channels else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.gate(self.conv_b(F.relu(self.conv_a(x))))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class DecoderLayer(nn.Module):
    """Conv3d (or in-plane x2 transposed conv) followed by SE gating."""

    def __init__(self, in_channels: int, out_channels: int, upsample: bool):
        super().__init__()
        if upsample:
            self.conv = nn.ConvTranspose3d(in_channels, out_channels, (3, 4, 4), stride=(1, 2, 2), padding=1)
        else:
            self.conv = nn.Conv3d(in_channels, out_channels, 3, padding=1)
        self.gate = SEGate(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.gate(self.conv(x)), 0.2)


class SliceEncoder(nn.Module):
    """ResNet-18-like 3D encoder: stem (stride 2 in-plane), 4 stages (stride 1, 2, 2, 1 in-plane)."""

    def __init__(self, in_channels: int, widths: tuple[int, int, int, int], blocks: tuple[int, int, int, int]):
        super().__init__()
        self.stem = nn.Conv3d(in_channels, widths[0], (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3))
        strides = (1, 2, 2, 1)
        stages = []
        previous = widths[0]
        for width, count, stride in zip(widths, blocks, strides, strict=True):
            layers = [ResidualBlock3D(previous, width, stride)]
            layers += [ResidualBlock3D(width, width) for _ in range(count - 1)]
            stages.append(nn.Sequential(*layers))
            previous = width
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor, up_to: int | None = None) -> list[torch.Tensor]:
        """Returns the stem output and each stage's output (strides 2, 2, 4, 8, 8 in-plane), or only the
        first ``up_to + 1`` of them (the deeper stages are not computed)."""
        features = [F.relu(self.stem(x))]
        for stage in self.stages[:None if up_to is None else max(up_to, 0)]:
            features.append(stage(features[-1]))
        return features


class SliceInterpolationNet(nn.Module):
    """Stages 1b/1c: k = 4 LR slices (B, C, 4, H, W) -> the r HR slices between the middle two.

    Args:
        image_channels: number of MRI contrasts.
        num_classes: number of one-hot label channels.
        scale_factor: r.
        widths: encoder widths (authors / FLAVR: 64, 128, 256, 512).
        blocks: residual blocks per encoder stage (FLAVR ResNet-18: 2, 2, 2, 2).
        num_attention_maps: M of the UASR head; 0 = plain output head (stage 1b).
        attention_kernel: in-plane kernel of the attention conv (authors: 1).
        refine_prior: when True, ``forward`` takes the stage 1a estimate of the r HR slices as a
            prior: the network sees it at full resolution and predicts a residual on top of it.
            When False the prior is cubic interpolation of the frames.

    Returns from ``forward``: a dict with ``output`` (B, C, r, H, W) — image channels then label
    logits — and, for the UASR head, ``uncertainty`` (B, 1, r, H, W) in (0, 1).
    H and W must be multiples of 8.
    """

    def __init__(self, image_channels: int, num_classes: int, scale_factor: int,
                 widths: tuple[int, int, int, int] = (64, 128, 256, 512),
                 blocks: tuple[int, int, int, int] = (2, 2, 2, 2), num_attention_maps: int = 0,
                 refine_prior: bool = False, attention_kernel: int = 7):
        super().__init__()
        self.refine_prior = refine_prior
        self.image_channels = image_channels
        self.num_classes = num_classes
        self.scale_factor = scale_factor
        self.num_attention_maps = num_attention_maps
        channels = image_channels + num_classes
        w0, w1, w2, w3 = widths
        self.encoder = SliceEncoder(channels, tuple(widths), tuple(blocks))
        self.decoder = nn.ModuleList([
            DecoderLayer(w3, w2, upsample=False),
            DecoderLayer(2 * w2, w1, upsample=True),
            DecoderLayer(2 * w1, w0, upsample=True),
            DecoderLayer(2 * w0, w0, upsample=False),
            DecoderLayer(2 * w0, w0, upsample=True),
        ])
        self.fuse = nn.Conv2d(w0 * NUM_FRAMES, w0, 1, bias=False)
        # FLAVR's decoder reaches full resolution only through a transposed conv from stride 2; a
        # full-resolution path from the input frames keeps fine in-plane detail (not in FLAVR)
        self.full_resolution = nn.Conv2d(channels * (NUM_FRAMES + (scale_factor if refine_prior else 0)), w0, 3,
                                         padding=1)
        if num_attention_maps:
            self.reconstructions = nn.Conv2d(w0, num_attention_maps * channels * scale_factor, 7, padding=3,
                                             padding_mode="reflect")
            self.attention = nn.Conv2d(w0, num_attention_maps * scale_factor, attention_kernel,
                                       padding=attention_kernel // 2, padding_mode="reflect")
            self.uncertainty = nn.Conv3d(num_attention_maps, 1, 1)
            self._init_uncertainty_scale()
            head = self.reconstructions
        else:
            self.out = nn.Conv2d(w0, channels * scale_factor, 7, padding=3, padding_mode="reflect")
            head = self.out
        # the residual starts at zero: an untrained network is exactly the interpolation prior
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)

    def fractions(self) -> torch.Tensor:
        """Position of each output slice between frame 1 (0) and frame 2 (1) on the cell-centred grid."""
        r = self.scale_factor
        offset = (r + 1) // 2  # first HR slice after LR centre k is r*k + offset
        return (offset + torch.arange(r, dtype=torch.float32) - (r - 1) / 2.0) / r

    def interpolation_prior(self, frames: torch.Tensor) -> torch.Tensor:
        """Cubic (Catmull-Rom) interpolation of the image over the 4 frames, linear for the labels."""
        f = self.fractions().to(frames).view(1, 1, -1, 1, 1)
        image = frames[:, : self.image_channels]
        weights = ((-f ** 3 + 2 * f ** 2 - f) / 2, (3 * f ** 3 - 5 * f ** 2 + 2) / 2,
                   (-3 * f ** 3 + 4 * f ** 2 + f) / 2, (f ** 3 - f ** 2) / 2)
        cubic = sum(w * image[:, :, i:i + 1] for i, w in enumerate(weights))
        labels = frames[:, self.image_channels:]
        linear = (1 - f) * labels[:, :, 1:2] + f * labels[:, :, 2:3]
        return torch.cat([cubic, label_prior(linear)], 1)

    def _init_uncertainty_scale(self) -> None:
        """Start sigma near a typical reconstruction error, with room to move by attention alone.

        sigma = sigmoid(b + sum_m w_m a_m) with softmax attention a: a voxel attending head m gets
        logit b + w_m. Spreading w over [-2, 2] around b = logit(INITIAL_SIGMA) lets sigma span about
        0.007-0.3 from the first step; PyTorch's default init (|w| < 1/sqrt(M), random b) starts near
        0.4 for every voxel, a logit ~3 away from the errors, which Adam cannot cover in a short stage.
        """
        m = self.num_attention_maps
        with torch.no_grad():
            self.uncertainty.weight.copy_(torch.linspace(-2.0, 2.0, m).view(1, m, 1, 1, 1))
            self.uncertainty.bias.fill_(math.log(INITIAL_SIGMA / (1 - INITIAL_SIGMA)))

    def init_uncertainty_head_from(self, plain_head: nn.Conv2d, generator: torch.Generator | None = None) -> None:
        """Stage 1c starts from stage 1b: each of the M reconstructions is 1b's output layer plus noise.

        Identical copies would make the attention-weighted sum independent of the attention, so the
        reconstruction loss would give the attention (sigma's only input) no signal; the noise (half
        the spread of 1b's weights) breaks that symmetry from the first step.
        """
        m = self.num_attention_maps
        weight = plain_head.weight.detach().repeat(m, 1, 1, 1)
        scale = 0.5 * float(plain_head.weight.detach().std()) or 1e-3
        noise = torch.randn(weight.shape, generator=generator) * scale
        with torch.no_grad():
            self.reconstructions.weight.copy_(weight + noise.to(weight))
            self.reconstructions.bias.copy_(plain_head.bias.detach().repeat(m))

    def encode(self, frames: torch.Tensor, up_to: int | None = None) -> list[torch.Tensor]:
        """Encoder features (all levels, or levels 0..``up_to``)."""
        return self.encoder(frames, up_to)

    def forward(self, frames: torch.Tensor, prior: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Args: frames (B, C+K, 4, H, W); prior (B, C+K, r, H, W) — image and label probabilities —
        required when ``refine_prior``."""
        x0, x1, x2, x3, x4 = self.encoder(frames)
        d = self.decoder[0](x4)
        d = self.decoder[1](torch.cat([d, x3], 1))
        d = self.decoder[2](torch.cat([d, x2], 1))
        d = self.decoder[3](torch.cat([d, x1], 1))
        d = self.decoder[4](torch.cat([d, x0], 1))
        b, c, k, h, w = d.shape
        full = frames.reshape(b, -1, h, w)
        if self.refine_prior:
            if prior is None:
                raise ValueError("This network refines a stage 1a estimate: pass prior=(B, C+K, r, H, W).")
            full = torch.cat([full, prior.reshape(b, -1, h, w)], 1)
        fused = F.leaky_relu(self.fuse(d.reshape(b, c * k, h, w)) + self.full_resolution(full), 0.2)
        channels = self.image_channels + self.num_classes
        r = self.scale_factor
        if self.refine_prior:
            prior = torch.cat([prior[:, : self.image_channels], label_prior(prior[:, self.image_channels:])], 1)
        else:
            prior = self.interpolation_prior(frames)
        if not self.num_attention_maps:
            return {"output": prior + self.out(fused).view(b, channels, r, h, w)}
        m = self.num_attention_maps
        recon = self.reconstructions(fused).view(b, m, channels, r, h, w)
        attention = torch.softmax(self.attention(fused).view(b, m, 1, r, h, w), dim=1)
        output = prior + (attention * recon).sum(1)
        uncertainty = torch.sigmoid(self.uncertainty(attention[:, :, 0]))
        return {"output": output, "uncertainty": uncertainty}


def uncertainty_parameter_prefixes() -> tuple[str, ...]:
    """The layers that map features to sigma (trained at a higher learning rate in stage 1c)."""
    return ("attention.", "uncertainty.")


def head_parameter_prefixes(num_attention_maps: int) -> tuple[str, ...]:
    """Names of the output layers that stage 1c re-initialises when it starts from stage 1b."""
    return ("reconstructions.", "attention.", "uncertainty.") if num_attention_maps else ("out.",)


def network_from_checkpoint(checkpoint: dict, source: str) -> nn.Module:
    """The network an SR checkpoint holds (``network``: ``plane`` or ``slice``, ``network_kwargs``, ``model``),
    built on the CPU with its weights loaded.

    Args:
        checkpoint: a checkpoint of ``rehrseg_train_sr`` (e.g. from
            :func:`rehrseg_nnunet.sr.config.verified_final_checkpoint`).
        source: the checkpoint's file, for the message.

    Raises:
        RehrsegInputError: the checkpoint's weights do not fit the network its kwargs describe.
    """
    from rehrseg_nnunet.errors import RehrsegInputError

    kind = PlaneSRNet if checkpoint["network"] == "plane" else SliceInterpolationNet
    try:
        net = kind(**checkpoint["network_kwargs"])
        net.load_state_dict(checkpoint["model"])
    except (RuntimeError, TypeError, ValueError, KeyError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RehrsegInputError(f"{source} holds weights that do not fit its own network ({reason[:160]}); retrain "
                                f"that stage (rehrseg_train_sr --continue after deleting the file).") from None
    return net
