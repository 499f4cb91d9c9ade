"""The four LDSeg networks, one implementation for 2D and 3D (chosen by `spatial_dims`).

Label encoder f_le: label map -> standardized label latent z_l0 (1/2^n grid).
Image encoder f_ie: image -> image latent z_i on the same grid.
Denoiser eps_theta(z_t, z_i, t): MONAI's DDPM U-Net on concat[z_t, z_i].
Label decoder f_ld: latent -> class logits at full resolution.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from monai.networks.blocks import SpatialAttentionBlock
from monai.networks.layers.factories import Conv
from monai.networks.nets import DiffusionModelUNet
from torch import nn
from torch.utils.checkpoint import checkpoint

from ldseg.config import ModelConfig
from ldseg.inference.runtime import channels_last_format

# At inference, an image-encoder stem whose output reaches SLAB_OUTPUT elements and an
# upsampling conv whose output reaches SLAB_ELEMENTS (as the decoder's low-memory blocks) run
# in slabs of the last axis of about SLAB_OUTPUT elements of output each. Below that their
# transients are small (2D 512x512 at the reference widths keeps the plain calls).
SLAB_ELEMENTS = 2**24
SLAB_OUTPUT = 2**23


def make_norm(kind: str, channels: int) -> nn.Module:
    """GroupNorm by default: BatchNorm's running statistics are unreliable in eval mode with
    the small batches a CPU allows (method page, pitfalls)."""
    if kind == "batch":
        return _BatchNormAnyDims(channels)
    groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class _BatchNormAnyDims(nn.BatchNorm1d):
    """BatchNorm over channel dim for any number of spatial dims (flattens them)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        return super().forward(x.reshape(shape[0], shape[1], -1)).reshape(shape)


def standardize(z: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Zero mean, unit variance per sample over all latent elements.

    Per sample, not per batch: the reference's batch-wide version couples the samples.
    """
    dims = tuple(range(1, z.ndim))
    mean = z.mean(dim=dims, keepdim=True)
    var = z.var(dim=dims, keepdim=True, unbiased=False)
    return (z - mean) * torch.rsqrt(var + eps)


class ResBlock(nn.Module):
    """Two 3x3 convs with norm + swish, dropout, and a 1x1 shortcut (reference block)."""

    def __init__(self, spatial_dims: int, cin: int, cout: int, norm: str, dropout: float) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.conv1 = conv(cin, cout, 3, padding=1)
        self.norm1 = make_norm(norm, cout)
        self.conv2 = conv(cout, cout, 3, padding=1)
        self.norm2 = make_norm(norm, cout)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.skip = conv(cin, cout, 1) if cin != cout else nn.Identity()

    checkpointing = False  # set by LDSeg.set_gradient_checkpointing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.checkpointing and torch.is_grad_enabled():
            # Keep only the block input for backward and recompute the rest: the same
            # numbers, a third more compute, far less memory at full resolution.
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        # In-place activations when no gradient is needed: at 512x512 a fresh 130 MB tensor
        # per activation costs more in page faults than the SiLU itself (4x measured).
        # One name rebound step by step: each full-resolution intermediate is freed as soon
        # as the next exists (two alive at a time instead of three: -33 MB at 512x512).
        inplace = not torch.is_grad_enabled()
        h = self.conv1(x)
        h = F.silu(self.norm1(h), inplace=inplace)
        h = self.dropout(h)
        h = self.conv2(h)
        h = F.silu(self.norm2(h), inplace=inplace)
        return h.add_(self.skip(x)) if inplace else h + self.skip(x)


    def forward_into_input(self, x: torch.Tensor, chunks: int = 4) -> torch.Tensor:
        """Inference only, identity shortcut, GroupNorm: the same function as `_forward`, with
        the block's output accumulated into `x` in place, both convs run a few GroupNorm groups
        of output channels at a time, and each chunk normalised in place. Each group's
        statistics are its own, so this is exact up to float rounding; peak memory is x +
        hidden + one chunk instead of three full tensors (3D 128x128x256 at 32 channels: decoder
        peak 2.00 -> 1.75 GB). Slower per block (8-channel conv3d chunks run at half the rate
        of a full conv), so it is kept for the largest grids only. Consumes `x`."""
        norms = (self.norm1, self.norm2)
        if (torch.is_grad_enabled() or self.training or not isinstance(self.skip, nn.Identity)
                or not all(isinstance(n, nn.GroupNorm) for n in norms)):
            return self._forward(x)
        d = x.ndim - 2
        layout = channels_last_format(d)
        if self.conv1.weight.is_contiguous(memory_format=layout):
            # Keep the weights' layout: a contiguous x here would leave this and every later
            # stage in the slow layout (3D decoder 4.7 -> 7.4 s measured).
            x = x.contiguous(memory_format=layout)
        conv_nd = F.conv2d if d == 2 else F.conv3d
        per_group = self.conv1.out_channels // self.norm1.num_groups
        step = per_group * max(1, self.norm1.num_groups // chunks)
        hidden = torch.empty_like(x)
        for source, target, conv, norm in ((x, hidden, self.conv1, self.norm1),
                                           (hidden, x, self.conv2, self.norm2)):
            for c0 in range(0, conv.out_channels, step):
                sl = slice(c0, c0 + step)
                part = conv_nd(source, conv.weight[sl], conv.bias[sl], padding=1)
                _group_norm_silu_(part, per_group, norm.weight[sl], norm.bias[sl], norm.eps)
                if target is hidden:
                    target[:, sl] = part
                else:
                    target[:, sl] += part
        return x


def _group_norm_silu_(x: torch.Tensor, per_group: int, weight: torch.Tensor, bias: torch.Tensor,
                      eps: float) -> None:
    """silu(group_norm(x)) in place: F.group_norm would allocate a second chunk-sized tensor.

    Two passes (mean, then the centred sum of squares) over a (B, voxels, C) view of
    channels-last memory: reducing over it ran 8x faster than torch.var_mean over the strided
    grouped view (0.6 vs 5.3 ms for 8 channels at 512x512).
    """
    b, c = x.shape[:2]
    groups = c // per_group
    if x.is_contiguous():
        flat, dim = x.view(b, c, -1), 2
    else:  # channels-last: a view, so the in-place ops below write x
        flat, dim = x.movedim(1, -1).view(b, -1, c), 1
    count = flat.shape[dim] * per_group

    def per_channel(group_values: torch.Tensor) -> torch.Tensor:  # (b, groups) -> broadcastable
        return group_values.repeat_interleave(per_group, 1).unsqueeze(dim)

    flat.sub_(per_channel(flat.sum(dim).view(b, groups, per_group).sum(2) / count))
    var = torch.linalg.vector_norm(flat, dim=dim).square().view(b, groups, per_group).sum(2) / count
    flat.mul_(per_channel(torch.rsqrt(var + eps)) * weight.unsqueeze(0).unsqueeze(dim))
    flat.add_(bias.unsqueeze(0).unsqueeze(dim))
    F.silu(x, inplace=True)


def _attention(spatial_dims: int, channels: int, head_channels: int) -> nn.Module:
    # MONAI's block with PyTorch's memory-efficient scaled_dot_product_attention.
    heads_ch = head_channels if channels % head_channels == 0 else channels
    groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
    return SpatialAttentionBlock(
        spatial_dims, channels, num_head_channels=heads_ch, norm_num_groups=groups,
        use_flash_attention=True,
    )


class LabelEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, w = cfg.spatial_dims, cfg.label_encoder_widths
        conv = Conv[Conv.CONV, d]
        cin = cfg.num_classes if cfg.label_input == "onehot" else 1
        self.num_classes, self.label_input = cfg.num_classes, cfg.label_input
        layers: list[nn.Module] = [ResBlock(d, cin, w[0], cfg.norm, cfg.dropout)]
        for prev, cur in zip(w[:-1], w[1:], strict=True):
            layers.append(conv(prev, prev, 3, stride=2, padding=1))
            layers.append(ResBlock(d, prev, cur, cfg.norm, cfg.dropout))
        self.blocks = nn.Sequential(*layers)
        self.out = conv(w[-1], cfg.latent_channels, 1)

    def forward(self, label: torch.Tensor) -> torch.Tensor:
        """label: (B, *spatial) integer map -> standardized latent (B, c, *spatial/2^n)."""
        if self.label_input == "onehot":
            x = F.one_hot(label.long(), self.num_classes).movedim(-1, 1).float()
        else:
            x = label[:, None].float()
        return standardize(self.out(self.blocks(x)))


class ImageEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, w = cfg.spatial_dims, cfg.image_encoder_widths
        conv = Conv[Conv.CONV, d]
        layers: list[nn.Module] = [conv(cfg.in_channels, cfg.image_encoder_stem, 3, padding=1)]
        prev = cfg.image_encoder_stem
        for i, cur in enumerate(w):
            layers.append(ResBlock(d, prev, cur, cfg.norm, cfg.dropout))
            layers.append(conv(cur, cur, 3, stride=2, padding=1))
            layers.append(make_norm("group", cur))
            # Self-attention on the two coarsest grids, never above 1/4 of the input per axis:
            # with few downsamplings (--downsamplings 2) a 1/2-resolution grid has 10^4+ tokens.
            if cfg.image_encoder_attention and i >= max(len(w) - 2, 1):
                layers.append(_attention(d, cur, cfg.attention_head_channels))
            prev = cur
        layers.append(conv(prev, cfg.image_latent_channels, 1))
        if cfg.image_encoder_attention:
            layers.append(_attention(d, cfg.image_latent_channels, cfg.attention_head_channels))
        # Per-sample normalisation instead of the reference's final BatchNorm (eval-mode safe).
        layers.append(nn.GroupNorm(1, cfg.image_latent_channels))
        self.net = nn.Sequential(*layers)

    checkpointing = False  # set by LDSeg.set_gradient_checkpointing

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if not (self.checkpointing and torch.is_grad_enabled()):
            return self.net[1:](self._stem(image))
        # Each residual block and the stride-2 conv after it as one recomputed unit: the
        # block's full-resolution output is then not kept for the conv's backward.
        h, layers, i = self._stem(image), list(self.net)[1:], 0
        while i < len(layers):
            if isinstance(layers[i], ResBlock):
                h = checkpoint(_block_then, layers[i], layers[i + 1], h, use_reentrant=False)
                i += 2
            else:
                h = layers[i](h)
                i += 1
        return h

    def _stem(self, image: torch.Tensor) -> torch.Tensor:
        # With one input channel oneDNN returns the 3D stem's output contiguous even when the
        # weights are channels-last; the first block's convs would then each make a
        # channels-last copy of it (3D 128x128x256: a 256 MB transient at the process peak).
        layout = channels_last_format(image.ndim - 2)
        weight = self.net[1].conv1.weight
        channels_last = weight.is_contiguous(memory_format=layout) and not weight.is_contiguous()
        wanted = layout if channels_last else torch.contiguous_format
        stem = self.net[0]
        if (not torch.is_grad_enabled()
                and image.shape[0] * stem.out_channels * image.shape[2:].numel()
                >= SLAB_OUTPUT):
            return conv_in_slabs(image, stem, wanted)
        return stem(image).contiguous(memory_format=wanted)


def conv_in_slabs(x: torch.Tensor, conv: nn.Module,
                  memory_format: torch.memory_format) -> torch.Tensor:
    """conv(x) for a 3-tap, stride-1, padding-1 conv, computed a slab of the last axis at a
    time into an output made in `memory_format`.

    Why: on the 3D reference grid oneDNN builds the whole 1-channel stem's output in its own
    layout and then reorders it into a second, contiguous one, which was then copied to
    channels-last: three 256 MB tensors at 128x128x256, and under tcmalloc a heap fragmented
    for the rest of the pass. Slab by slab only the output is full-size. Each output voxel
    sums the same products (zero padding at the ends of the axis, as the conv's own)."""
    d = x.ndim - 2
    out = torch.empty((x.shape[0], conv.out_channels, *x.shape[2:]), dtype=x.dtype,
                      device=x.device, memory_format=memory_format)
    conv_nd = F.conv2d if d == 2 else F.conv3d
    padding = (1,) * (d - 1) + (0,)
    return _fill_in_slabs(x, out, lambda slab: conv_nd(slab, conv.weight, conv.bias,
                                                       padding=padding))


def _fill_in_slabs(x: torch.Tensor, out: torch.Tensor,
                   op: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """out[..., s*a:s*b] = op(x[..., a-1:b+1]) slab by slab along the last axis, where s is
    out's size over x's on that axis; the halo is zero-padded where it leaves x (a slab-sized
    copy instead of a padded copy of the whole input)."""
    size = x.shape[-1]
    scale = out.shape[-1] // size
    per_slab = max(1, SLAB_OUTPUT // max(1, out.numel() // size))
    for a in range(0, size, per_slab):
        b = min(size, a + per_slab)
        slab = x[..., max(a - 1, 0):min(b + 1, size)]
        if a == 0 or b == size:
            slab = F.pad(slab, [int(a == 0), int(b == size)])
        out[..., scale * a:scale * b] = op(slab)
    return out


def _block_then(block: ResBlock, layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return layer(block._forward(h))


class Denoiser(nn.Module):
    """Predicts the noise in z_t given the image latent; MONAI's standard DDPM U-Net."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.unet = DiffusionModelUNet(
            spatial_dims=cfg.spatial_dims,
            in_channels=cfg.latent_channels + cfg.image_latent_channels,
            out_channels=cfg.latent_channels,
            channels=cfg.denoiser_widths,
            attention_levels=cfg.denoiser_attention,
            num_res_blocks=cfg.denoiser_res_blocks,
            norm_num_groups=4,
            num_head_channels=[min(c, cfg.attention_head_channels) for c in cfg.denoiser_widths],
            use_flash_attention=True,
        )
        self.multiple = 2 ** (len(cfg.denoiser_widths) - 1)

    def forward(self, z_t: torch.Tensor, z_image: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # The latent grid need not be a multiple of the U-Net's own downsampling: pad, then crop.
        spatial = z_t.shape[2:]
        pads: list[int] = []
        for size in reversed(spatial):
            pads += [0, (-size) % self.multiple]
        x = torch.cat([z_t, z_image], dim=1).contiguous()  # channels-last is slow here
        if any(pads):
            x = F.pad(x, pads, mode="replicate")
        eps = self.unet(x, timesteps=t)
        return eps[(slice(None), slice(None), *(slice(0, s) for s in spatial))]


def upsample_conv(x: torch.Tensor, conv: nn.Module) -> torch.Tensor:
    """conv(nearest 2x upsampling of x) for a 3-tap, padding-1 conv, without the upsampling.

    On the nearest-upsampled grid the three taps (lo, mid, hi) of an axis read only two
    distinct low-res values: output 2i sees x[i-1]*lo + x[i]*(mid+hi), output 2i+1 sees
    x[i]*(lo+mid) + x[i+1]*hi. The same function (up to float rounding) with 9/4 (2D) or 27/8
    (3D) times fewer multiply-adds, and the 2^d-times larger upsampled tensor is never built
    (1 GB at 128x128x256).

    Channels-last input: one stride-2 transposed convolution with the 4-tap kernel
    [hi, mid+hi, lo+mid, lo] per axis, which oneDNN writes in place (3D, 64->32 channels,
    64x64x128 -> 128x128x256: 1.50 -> 0.85 s; 2D 256^2 -> 512^2: 43 -> 29 ms). Contiguous
    input: the 2^d output phases as separate 2-tap convs, which there were as fast or faster
    (3D 32x32x64: 0.39 s against 0.46 s as a transposed conv; benchmarks/results/speed_log.md).
    """
    d = x.ndim - 2
    layout = channels_last_format(d)
    if x.is_contiguous(memory_format=layout) and not x.is_contiguous():
        weight = conv.weight
        for dim in range(2, 2 + d):
            lo, mid, hi = (weight.narrow(dim, i, 1) for i in range(3))
            weight = torch.cat([hi, mid + hi, lo + mid, lo], dim)
        transposed = F.conv_transpose2d if d == 2 else F.conv_transpose3d
        weight = weight.transpose(0, 1).contiguous(memory_format=layout)
        out_elements = x.shape[0] * conv.out_channels * x.shape[2:].numel() * 2**d
        if torch.is_grad_enabled() or out_elements < SLAB_ELEMENTS:
            return transposed(x, weight, conv.bias, stride=2, padding=1)
        # Slab by slab along the last axis, into one channels-last output: oneDNN makes a
        # copy of the whole input otherwise (3D 128x128x256: +256 MB that tcmalloc then
        # keeps). An input slab [a-1, b+1) (zero-padded at the ends) with padding 3 on that
        # axis gives exactly the outputs [2a, 2b).
        out = torch.empty((x.shape[0], conv.out_channels, *(2 * n for n in x.shape[2:])),
                          dtype=x.dtype, device=x.device, memory_format=layout)
        padding = (1,) * (d - 1) + (3,)
        return _fill_in_slabs(x, out, lambda slab: transposed(
            slab.contiguous(memory_format=layout), weight, conv.bias, stride=2, padding=padding))
    weights = [conv.weight]
    for dim in range(2, 2 + d):  # phase 0 reads offsets (-1, 0), phase 1 reads (0, +1)
        split = [(w.narrow(dim, 0, 1), w.narrow(dim, 1, 1), w.narrow(dim, 2, 1)) for w in weights]
        weights = [phase for lo, mid, hi in split
                   for phase in (torch.cat([lo, mid + hi], dim), torch.cat([lo + mid, hi], dim))]
    sizes = x.shape[2:]
    out = torch.empty((x.shape[0], conv.out_channels, *(2 * n for n in sizes)), dtype=x.dtype,
                      device=x.device)
    padded = F.pad(x, [1, 1] * d)
    conv_nd = F.conv2d if d == 2 else F.conv3d
    for weight, phases in zip(weights, itertools.product((0, 1), repeat=d), strict=True):
        window = padded[(slice(None), slice(None), *(slice(a, a + n + 1)
                                                      for a, n in zip(phases, sizes, strict=True)))]
        out[(slice(None), slice(None), *(slice(a, None, 2) for a in phases))] = conv_nd(
            window, weight, conv.bias)
    return out


class LabelDecoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, w = cfg.spatial_dims, cfg.label_decoder_widths
        conv = Conv[Conv.CONV, d]
        self.stem = conv(cfg.latent_channels, w[0], 3, padding=1)
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        prev = w[0]
        for cur in w:
            self.ups.append(conv(prev, cur, 3, padding=1))  # after a nearest 2x upsampling
            self.blocks.append(ResBlock(d, cur, cur, cfg.norm, cfg.dropout))
            prev = cur
        self.out = conv(prev, cfg.num_classes, 1)

    checkpointing = False  # set by LDSeg.set_gradient_checkpointing

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Latent -> class logits (softmax is applied by the loss and at inference)."""
        h = self.stem(z)
        for index in range(len(self.blocks)):
            if self.checkpointing and torch.is_grad_enabled():
                # The whole stage (upsampling conv, swish, block) as one recomputed unit: at
                # full resolution only its half-resolution input is kept, not three tensors.
                h = checkpoint(self._stage, h, index, use_reentrant=False)
            else:
                # Inlined so that rebinding h frees the stage input as soon as its upsampling
                # exists, instead of the call frame holding it through the block (at 512x512,
                # 17 MB less at the decoder's peak).
                h = self._upsample(h, index)
                h = self._block(h, index)
        return self.out(h)

    # At inference, a stage whose activations reach this size (elements) runs its block in
    # place and in channel chunks: 3D 128x128x256 then fits in 2 GB (1.89 GB, 8.5 s). Below it
    # the plain block is faster (2D 512x512: 0.37 s/image, 0.56 GB plain; 0.41 s, 0.51 GB
    # chunked), so 2D images up to 512x512 keep the plain block.
    low_memory_elements = 2**24

    def _stage(self, h: torch.Tensor, index: int) -> torch.Tensor:
        return self._block(self._upsample(h, index), index)

    def _upsample(self, h: torch.Tensor, index: int) -> torch.Tensor:
        return F.silu(upsample_conv(h, self.ups[index]), inplace=not torch.is_grad_enabled())

    def _block(self, h: torch.Tensor, index: int) -> torch.Tensor:
        if not torch.is_grad_enabled() and h.numel() >= self.low_memory_elements:
            return self.blocks[index].forward_into_input(h)  # h is ours: it may be consumed
        return self.blocks[index]._forward(h)  # the stage is checkpointed, not the block


class LDSeg(nn.Module):
    """The four networks, trained end to end by one loss."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.label_encoder = LabelEncoder(cfg)
        self.image_encoder = ImageEncoder(cfg)
        self.denoiser = Denoiser(cfg)
        self.label_decoder = LabelDecoder(cfg)

    def parameter_counts(self) -> dict[str, int]:
        return {
            name: sum(p.numel() for p in module.parameters())
            for name, module in self.named_children()
        }

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute residual blocks in backward instead of storing their activations."""
        for module in self.modules():
            if isinstance(module, ResBlock | ImageEncoder | LabelDecoder):
                module.checkpointing = enabled
