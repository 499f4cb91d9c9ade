"""The speed-ups compute the same thing: segmentations and gradients are unchanged by them."""

from __future__ import annotations

import copy

import pytest
import torch

from ldseg.config import ModelConfig
from ldseg.diffusion.schedule import NoiseSchedule
from ldseg.errors import LdsegError
from ldseg.inference.runtime import autocast, prepare_for_inference, resolve_device
from ldseg.inference.sampling import segment_batch
from ldseg.model.networks import LDSeg, upsample_conv


def tiny(spatial_dims: int, in_channels: int = 2, num_classes: int = 3) -> ModelConfig:
    return ModelConfig(
        spatial_dims=spatial_dims, in_channels=in_channels, num_classes=num_classes,
        label_encoder_widths=(8, 8, 8), image_encoder_stem=8, image_encoder_widths=(8, 8),
        label_decoder_widths=(8, 8), denoiser_widths=(8, 8), denoiser_attention=(False, True),
        denoiser_res_blocks=1, latent_channels=2, image_latent_channels=2,
        attention_head_channels=8,
    )


def decisive_model(cfg: ModelConfig) -> LDSeg:
    """A random model whose class logits are far apart, so that argmax ties (where float
    rounding could flip a label either way) do not occur."""
    torch.manual_seed(0)
    model = LDSeg(cfg).eval()
    with torch.no_grad():
        model.label_decoder.out.weight.mul_(50)
    return model


def segment(model, images, memory_format=torch.contiguous_format, samples=2):
    with torch.inference_mode():
        out = segment_batch(model, NoiseSchedule("cosine", 1000), images, steps=4,
                            samples=samples, generator=torch.Generator().manual_seed(3),
                            memory_format=memory_format)
    return out.mean_probs, out.sample_labels


@pytest.mark.parametrize("dims,grid,channels,batch", [(2, (32, 48), 2, 2), (3, (16, 16, 24), 2, 2),
                                                      (3, (16, 16, 24), 1, 1)])
def test_channels_last_and_inplace_paths_give_the_same_segmentation(dims, grid, channels, batch):
    plain = decisive_model(tiny(dims, in_channels=channels))
    fast = copy.deepcopy(plain)
    memory_format = prepare_for_inference(fast)
    assert fast.image_encoder.net[0].weight.is_contiguous(memory_format=memory_format)
    # The first block sees channels-last even where oneDNN hands the 1-channel 3D stem's
    # output back contiguous for a batch of one (each of its convs would otherwise copy it).
    layouts = []
    fast.image_encoder.net[1].register_forward_pre_hook(
        lambda _, args: layouts.append(args[0].is_contiguous(memory_format=memory_format)))
    images = torch.randn(batch, channels, *grid, generator=torch.Generator().manual_seed(1))
    probs_plain, samples_plain = segment(plain, images)
    probs_fast, samples_fast = segment(fast, images, memory_format)
    torch.testing.assert_close(probs_fast, probs_plain, atol=2e-4, rtol=0)
    assert torch.equal(samples_fast, samples_plain)  # every sample's label map
    # The mean of two samples that disagree is an exact 50/50 tie; elsewhere labels agree.
    top2 = probs_plain.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-4
    assert clear.float().mean() > 0.5
    assert torch.equal(probs_fast.argmax(1)[clear], probs_plain.argmax(1)[clear])
    assert layouts and all(layouts)
    # the optimised path must not have modified the caller's tensor in place
    assert torch.equal(images, torch.randn(batch, channels, *grid,
                                           generator=torch.Generator().manual_seed(1)))


def test_decoder_frees_each_stage_input_before_its_block(monkeypatch):
    """At inference the decoder's peak is its last full-resolution block: the stage input must
    already be gone then (17 MB at 512x512, 134 MB at 128x128x256)."""
    import weakref

    import ldseg.model.networks as networks

    model = LDSeg(tiny(2)).eval()
    stage_inputs: list[weakref.ref] = []
    alive_at_block: list[bool] = []
    real_upsample, real_block = networks.upsample_conv, networks.ResBlock._forward

    def upsample(x, conv):
        stage_inputs.append(weakref.ref(x))
        return real_upsample(x, conv)

    def block(self, x):
        if stage_inputs:
            alive_at_block.append(stage_inputs[-1]() is not None)
        return real_block(self, x)

    monkeypatch.setattr(networks, "upsample_conv", upsample)
    monkeypatch.setattr(networks.ResBlock, "_forward", block)
    with torch.inference_mode():
        model.label_decoder(torch.randn(1, 2, 8, 8))
    assert len(alive_at_block) == len(model.label_decoder.blocks)
    assert not any(alive_at_block)


def test_compiled_networks_give_the_same_segmentation():
    plain = decisive_model(tiny(2))
    fast = copy.deepcopy(plain)
    memory_format = prepare_for_inference(fast, compile=True)
    images = torch.randn(1, 2, 32, 32, generator=torch.Generator().manual_seed(1))
    probs_plain, _ = segment(plain, images, samples=1)
    probs_fast, _ = segment(fast, images, memory_format, samples=1)
    torch.testing.assert_close(probs_fast, probs_plain, atol=2e-4, rtol=0)
    assert torch.equal(probs_fast.argmax(1), probs_plain.argmax(1))


@pytest.mark.parametrize("dims,grid", [(2, (32, 32)), (3, (16, 16, 16))])
def test_gradient_checkpointing_gives_the_same_gradients(dims, grid):
    cfg = tiny(dims)
    cfg.dropout = 0.1  # the recomputation must replay the same dropout masks
    torch.manual_seed(0)
    model = LDSeg(cfg).train()
    checkpointed = copy.deepcopy(model)
    checkpointed.set_gradient_checkpointing(True)
    images = torch.randn(2, 2, *grid)
    labels = torch.randint(0, 3, (2, *grid))
    t = torch.tensor([10, 700])
    grads = []
    for net in (model, checkpointed):
        torch.manual_seed(5)
        z0 = net.label_encoder(labels)
        eps_hat = net.denoiser(z0, net.image_encoder(images), t)
        loss = net.label_decoder(eps_hat).square().mean() + eps_hat.square().mean()
        loss.backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_device_choice():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(LdsegError, match="not a device"):
        resolve_device("toaster")
    if not torch.cuda.is_available():
        with pytest.raises(LdsegError, match="no CUDA GPU"):
            resolve_device("cuda")


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("channels_last", [False, True])
def test_upsample_conv_is_conv_of_the_nearest_upsampling(dims, channels_last):
    """Both paths of the decoder's upsampling convolution (phase-split convs for contiguous
    input, one transposed conv for channels-last) compute exactly conv(upsample(x)),
    gradients too (float64, so that only the summation order could differ)."""
    conv = (torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d)(5, 7, 3, padding=1).double()
    x = torch.randn(2, 5, *(6, 9, 4)[:dims], dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last if dims == 2
                         else torch.channels_last_3d)
    x.requires_grad_(True)
    reference = conv(torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest"))
    fast = upsample_conv(x, conv)
    torch.testing.assert_close(fast, reference, atol=1e-12, rtol=0)
    grads_ref = torch.autograd.grad(reference.square().sum(), [x, conv.weight, conv.bias])
    grads_fast = torch.autograd.grad(fast.square().sum(), [x, conv.weight, conv.bias])
    for a, b in zip(grads_fast, grads_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-12)


@pytest.mark.parametrize("dims,chunks,channels_last", [(2, 4, False), (2, 3, True), (3, 2, False),
                                                      (3, 4, True)])
def test_block_in_place_and_in_channel_chunks_is_the_same_function(dims, chunks, channels_last):
    """The low-memory inference block (output accumulated into its input, convs a few
    GroupNorm groups at a time) against the plain block, in float64."""
    from ldseg.model.networks import ResBlock

    torch.manual_seed(0)
    block = ResBlock(dims, 16, 16, "group", 0.0).double().eval()
    for norm in (block.norm1, block.norm2):  # non-trivial affine, so slicing it is checked
        torch.nn.init.normal_(norm.weight)
        torch.nn.init.normal_(norm.bias)
    x = torch.randn(2, 16, *(6,) * dims, dtype=torch.float64)
    if channels_last:  # the in-place norm then works on a (B, voxels, C) view
        layout = torch.channels_last if dims == 2 else torch.channels_last_3d
        block = block.to(memory_format=layout)
        x = x.contiguous(memory_format=layout)
    with torch.inference_mode():
        expected = block._forward(x)
        got = block.forward_into_input(x.clone(), chunks=chunks)
    assert torch.allclose(got, expected, atol=1e-12)


@pytest.mark.parametrize("dims,grid", [(2, (32, 48)), (3, (16, 16, 24))])
def test_low_memory_decoder_gives_the_same_segmentation(dims, grid):
    model = decisive_model(tiny(dims))
    memory_format = prepare_for_inference(model)  # channels-last: the production layout
    images = torch.randn(2, 2, *grid)
    reference = segment(model, images, memory_format)
    model.label_decoder.low_memory_elements = 0  # every stage takes the low-memory path
    probs, labels = segment(model, images, memory_format)
    assert torch.equal(labels, reference[1])
    # float32: the in-place GroupNorm sums in another order than PyTorch's kernel
    assert (probs - reference[0]).abs().max() < 1e-4


@pytest.mark.parametrize("dims", [2, 3])
def test_slabbed_stem_and_upsampling_are_the_same_function(dims, monkeypatch):
    """At inference the large stem and upsampling convs run slab by slab along the last axis,
    each slab with its one-voxel halo: the same function as one call (float64, odd sizes, a
    last slab shorter than the others), written in the layout asked for."""
    from ldseg.model import networks

    layout = torch.channels_last if dims == 2 else torch.channels_last_3d
    torch.manual_seed(0)
    conv = (torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d)(5, 7, 3, padding=1).double()
    conv = conv.to(memory_format=layout)
    x = torch.randn(2, 5, *(6, 9, 11)[-dims:], dtype=torch.float64)
    x = x.contiguous(memory_format=layout)
    with torch.inference_mode():
        up_reference = conv(torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest"))
        stem_reference = conv(x)
        per_index = up_reference.numel() // x.shape[-1]
        monkeypatch.setattr(networks, "SLAB_ELEMENTS", 1)
        monkeypatch.setattr(networks, "SLAB_OUTPUT", 3 * per_index)  # slabs of 3 of 11
        calls = []
        real = torch.nn.functional.conv_transpose2d if dims == 2 else (
            torch.nn.functional.conv_transpose3d)
        monkeypatch.setattr(torch.nn.functional, real.__name__,
                            lambda *a, **k: calls.append(a[0].shape[-1]) or real(*a, **k))
        up = networks.upsample_conv(x, conv)
        stem = networks.conv_in_slabs(x, conv, layout)
    assert calls == [5, 5, 5, 4]  # 3 + a halo voxel each side (zeros past the ends)
    torch.testing.assert_close(up, up_reference, atol=1e-12, rtol=0)
    torch.testing.assert_close(stem, stem_reference, atol=1e-12, rtol=0)
    assert up.is_contiguous(memory_format=layout) and stem.is_contiguous(memory_format=layout)


@pytest.mark.parametrize("dims,grid,channels", [(2, (32, 48), 2), (3, (16, 16, 24), 1)])
def test_slabbed_networks_give_the_same_segmentation(dims, grid, channels, monkeypatch):
    from ldseg.model import networks

    model = decisive_model(tiny(dims, in_channels=channels))
    memory_format = prepare_for_inference(model)
    images = torch.randn(2, channels, *grid, generator=torch.Generator().manual_seed(1))
    reference = segment(model, images, memory_format)
    monkeypatch.setattr(networks, "SLAB_ELEMENTS", 1)
    monkeypatch.setattr(networks, "SLAB_OUTPUT", 2**10)  # every stem and upsampling in slabs
    layouts, slabbed = [], []
    model.image_encoder.net[1].register_forward_pre_hook(
        lambda _, args: layouts.append(args[0].is_contiguous(memory_format=memory_format)))
    fill = networks._fill_in_slabs
    monkeypatch.setattr(networks, "_fill_in_slabs",
                        lambda x, out, op: slabbed.append(out.shape[1]) or fill(x, out, op))
    probs, labels = segment(model, images, memory_format)
    assert layouts and all(layouts)  # the stem's output is made channels-last directly
    # the slabbed path really ran: the stem (8 channels) and both upsamplings (8 channels)
    assert slabbed == [8, 8, 8], slabbed
    assert torch.equal(labels, reference[1])
    assert (probs - reference[0]).abs().max() < 1e-5


def test_bf16_autocast_keeps_the_labels_of_a_decisive_model():
    """bf16 is an option, not an optimisation of the default path: its labels may differ where
    classes are close, but not where the model is sure."""
    model = decisive_model(tiny(2))
    images = torch.randn(2, 2, 32, 48, generator=torch.Generator().manual_seed(1))
    probs, labels = segment(model, images)
    with autocast(torch.device("cpu"), True):
        probs_bf16, labels_bf16 = segment(model, images)
    assert probs_bf16.dtype == torch.float32  # results leave autocast in fp32
    assert not torch.equal(probs_bf16, probs)  # bf16 did run
    assert (labels_bf16 == labels).float().mean() > 0.97  # 0.993 measured
    assert (probs_bf16 - probs).abs().mean() < 0.01  # a few near-ties move further


def test_bf16_warns_only_on_a_cpu_without_bf16_units(monkeypatch):
    import warnings

    from ldseg.inference import runtime

    for supported in (False, True):
        monkeypatch.setattr(runtime, "cpu_has_bf16", lambda s=supported: s)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with runtime.autocast(torch.device("cpu"), True):
                assert torch.is_autocast_enabled("cpu")
        assert bool(caught) is not supported
    with runtime.autocast(torch.device("cpu"), False):
        assert not torch.is_autocast_enabled("cpu")
