"""The eps-predicting U-Net (models/): shapes, the DDPM CIFAR-10 parameter count, conditioning, gradients, init."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch

from models import MODEL_CONFIGS, UNet, UNetConfig, count_parameters, create_model
from models.embeddings import GaussianFourierEmbedding, sinusoidal_embedding
from models.layers import AttnBlock

pytestmark = pytest.mark.usefixtures("one_thread")


def randomised(net: torch.nn.Module, seed: int = 0, std: float = 0.3) -> torch.nn.Module:
    """Add N(0, std^2) to every parameter: DDPM initialisation zeroes the last layer of every branch, so an
    untrained network is exactly 0 and could not show its dependence on x or t."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(std * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return net


@functools.cache
def randomised_model(name: str) -> UNet:
    """The named config, seeded and randomised, in eval mode; built once per module (cifar10 takes seconds)."""
    torch.manual_seed(0)
    return randomised(create_model(name)).eval()


def inputs(name: str, batch: int = 3, seed: int = 1, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shape = MODEL_CONFIGS[name].image_shape
    return torch.randn(batch, *shape, generator=gen, dtype=dtype), torch.rand(batch, generator=gen, dtype=dtype)


@pytest.mark.parametrize("name", sorted(MODEL_CONFIGS))
def test_each_config_maps_images_to_images_of_the_same_shape_and_dtype(name):
    net = randomised_model(name)
    x, t = inputs(name, batch=2)
    with torch.no_grad():
        out = net(x, t)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.abs().max() > 0
    assert net.config is MODEL_CONFIGS[name] or net.config == MODEL_CONFIGS[name]
    assert net.config.image_shape == tuple(x.shape[1:])


def test_double_precision_network_runs_in_float64():
    # Likelihood identities (docs/math.md §8.15) are checked with small float64 networks.
    torch.manual_seed(0)
    net = randomised(create_model("tiny", embedding="fourier")).double().eval()
    x, t = inputs("tiny", dtype=torch.float64)
    assert net(x, t).dtype == torch.float64


def test_cifar10_config_is_the_ddpm_network_with_35_7m_parameters():
    # Ho et al. (2020) report 35.7M parameters for the CIFAR-10 model (the count of their released network is
    # 35,746,307, which this architecture reproduces exactly).
    n = count_parameters(randomised_model("cifar10"))
    assert abs(n - 35.7e6) / 35.7e6 < 0.02
    assert n == 35_746_307


def test_digits_and_tiny_sizes():
    assert 0.8e6 <= count_parameters(create_model("digits")) <= 1.2e6
    assert count_parameters(create_model("tiny")) < 20_000


def test_ddpm_initialisation_outputs_exactly_zero_and_only_the_last_layer_gets_gradient_at_first():
    # Every residual branch ends in a zero conv, so the network is 0; the loss gradient then reaches conv_out only.
    torch.manual_seed(0)
    net = create_model("tiny")
    x, t = inputs("tiny")
    out = net(x, t)
    assert torch.equal(out, torch.zeros_like(x))
    ((out - x) ** 2).mean().backward()
    assert net.conv_out.weight.grad.abs().max() > 0
    assert net.conv_in.weight.grad.abs().max() == 0


@pytest.mark.parametrize("embedding", ["sinusoidal", "fourier"])
def test_gradient_reaches_every_parameter(embedding):
    torch.manual_seed(0)
    net = randomised(create_model("tiny", embedding=embedding))
    x, t = inputs("tiny")
    ((net(x, t) - x) ** 2).mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name


@pytest.mark.parametrize("embedding", ["sinusoidal", "fourier"])
def test_time_conditioning_changes_the_output(embedding):
    torch.manual_seed(0)
    net = randomised(create_model("tiny", embedding=embedding)).eval()
    x, _ = inputs("tiny")
    with torch.no_grad():
        a = net(x, torch.full((3,), 0.1))
        b = net(x, torch.full((3,), 0.9))
        c = net(x, torch.full((3,), 0.1 + 1 / 999))  # adjacent discrete steps t = i / (N - 1) differ too
    assert (a - b).norm() > 0.05 * a.norm()
    assert (a - c).norm() > 0
    # A 0-d t is the same time for every sample.
    assert torch.equal(net(x, torch.tensor(0.1)), a)


def test_unconditional_network_ignores_time_and_has_no_time_layers():
    # The NCSN form u_theta(x) (docs/math.md §4) is the U-Net without its time embedding.
    torch.manual_seed(0)
    net = randomised(create_model("tiny", conditional=False)).eval()
    x, _ = inputs("tiny")
    assert torch.equal(net(x, torch.zeros(3)), net(x, torch.ones(3)))
    assert not any("temb" in name for name, _ in net.named_parameters())
    assert count_parameters(net) < count_parameters(create_model("tiny"))


def test_samples_do_not_interact_in_a_batch():
    # GroupNorm normalises per sample (no batch statistics): the network is a function of each image alone.
    torch.manual_seed(0)
    net = randomised(create_model("tiny")).eval()
    x, t = inputs("tiny", batch=4)
    with torch.no_grad():
        together = net(x, t)
        alone = torch.cat([net(x[i : i + 1], t[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)


def test_fixed_seed_gives_identical_weights_and_outputs_and_dropout_only_acts_in_training():
    def build(seed):
        torch.manual_seed(seed)
        return randomised(create_model("tiny", dropout=0.5, embedding="fourier"), seed=seed)

    a, b, c = build(0), build(0), build(1)
    x, t = inputs("tiny")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert not torch.equal(a.fourier.w, c.fourier.w)
    a.eval(), b.eval()
    assert torch.equal(a(x, t), b(x, t))
    assert torch.equal(a(x, t), a(x, t))
    a.train()
    torch.manual_seed(5)
    first = a(x, t)
    torch.manual_seed(5)
    assert torch.equal(a(x, t), first)
    assert not torch.equal(a(x, t), first)


def test_sinusoidal_embedding_is_ddpms_closed_form():
    s = torch.tensor([0.0, 1.0, 17.0, 999.0], dtype=torch.float64)
    dim, half = 10, 5
    emb = sinusoidal_embedding(s, dim)
    for b, sb in enumerate(s.tolist()):
        for j in range(half):
            w = 10000.0 ** (-j / (half - 1))
            assert emb[b, j].item() == pytest.approx(math.sin(sb * w), abs=1e-12)
            assert emb[b, half + j].item() == pytest.approx(math.cos(sb * w), abs=1e-12)
    assert sinusoidal_embedding(s, 11)[:, -1].abs().max() == 0  # odd dim: a zero column


def test_gaussian_fourier_embedding_closed_form_and_frequencies_are_a_buffer():
    torch.manual_seed(0)
    emb = GaussianFourierEmbedding(64, scale=16.0)
    s = torch.tensor([0.25, 0.5], dtype=torch.float64)
    w = emb.w.double()
    expected = torch.cat([torch.sin(2 * math.pi * s[:, None] * w), torch.cos(2 * math.pi * s[:, None] * w)], dim=1)
    torch.testing.assert_close(emb(s), expected, rtol=0, atol=1e-12)
    assert list(emb.parameters()) == [] and "w" in emb.state_dict()
    # w ~ N(0, 16^2): 32 draws, the sample std within a factor 1.5 (its relative s.e. is 1/sqrt(64) = 0.125).
    assert 16 / 1.5 < emb.w.std().item() < 16 * 1.5


def test_bf16_autocast_agrees_with_float32():
    torch.manual_seed(0)
    net = randomised(create_model("tiny"), std=0.1).eval()
    x, t = inputs("tiny")
    with torch.no_grad():
        ref = net(x, t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x, t)
    # bf16 has an 8-bit mantissa (relative rounding 2^-9 per op): a few percent after ~20 layers.
    assert (low.float() - ref).norm() < 0.05 * ref.norm()


def test_attention_passes_4d_heads_to_sdpa_and_matches_the_3d_computation(monkeypatch):
    """q, k, v reach scaled_dot_product_attention as (B, 1, HW, C) with unit stride along C (what CUDA's fused
    kernels take), and the block's output equals the former 3-D computation to float64 rounding."""
    torch.manual_seed(0)
    block = randomised(AttnBlock(64, num_groups=32, skip_rescale=True)).double().eval()
    x = torch.randn(2, 64, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def three_d(x):
        B, C, H, W = x.shape
        q, k, v = block.qkv(block.norm(x)).reshape(B, 3, C, H * W).transpose(2, 3).unbind(1)  # each (B, HW, C)
        h = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return (x + block.proj(h.transpose(1, 2).reshape(B, C, H, W))) * block.out_scale

    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording(q, k, v, *args, **kwargs):
        seen.extend((t.shape, t.stride(-1)) for t in (q, k, v))
        return sdpa(q, k, v, *args, **kwargs)

    with torch.no_grad():
        want = three_d(x)
        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
        got = block(x)
    assert seen == [(torch.Size([2, 1, 64, 64]), 1)] * 3
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)
    # explicit softmax(q k^T / sqrt(C)) v, the formula of the docstring
    B, C, H, W = x.shape
    with torch.no_grad():
        q, k, v = block.qkv(block.norm(x)).reshape(B, 3, C, H * W).transpose(2, 3).unbind(1)
        h = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(C), dim=-1) @ v
        explicit = (x + block.proj(h.transpose(1, 2).reshape(B, C, H, W))) * block.out_scale
    torch.testing.assert_close(got, explicit, rtol=1e-12, atol=1e-12)


def test_config_round_trips_through_json_and_rebuilds_the_same_architecture():
    cfg = create_model("digits").config
    back = UNetConfig(**json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    UNet(back).load_state_dict(create_model("digits").state_dict(), strict=True)


def test_create_model_errors():
    with pytest.raises(ValueError, match="unknown model config 'mnist'"):
        create_model("mnist")
    with pytest.raises(TypeError, match="widht"):
        create_model("tiny", widht=3)
    with pytest.raises(TypeError, match="config"):
        UNet({"image_shape": (1, 8, 8)})
    with pytest.raises(TypeError, match="image_shape must be a sequence"):
        create_model("tiny", image_shape=8)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"attn_resolutions": (3,)}, "attn_resolutions"),
        ({"num_groups": 3}, "num_groups"),
        ({"image_shape": (1, 8, 6)}, "square"),
        ({"image_shape": (1, 6, 6), "ch_mult": (1, 2, 2)}, "divisible"),
        ({"image_shape": (1, 8)}, "image_shape"),
        ({"embedding": "learned"}, "embedding"),
        ({"dropout": 1.0}, "dropout"),
        ({"num_res_blocks": 0}, "num_res_blocks"),
        ({"ch_mult": ()}, "ch_mult"),
        ({"ch": 3, "num_groups": 1}, "even"),
        ({"num_groups": 0}, "num_groups"),
    ],
)
def test_invalid_configs_are_refused(overrides, match):
    with pytest.raises(ValueError, match=match):
        create_model("tiny", **overrides)


def test_forward_input_errors():
    net = create_model("tiny")
    x, t = inputs("tiny")
    with pytest.raises(ValueError, match="x must have shape"):
        net(torch.zeros(3, 3, 8, 8), t)
    with pytest.raises(TypeError, match="continuous time"):
        net(x, torch.arange(3))
    with pytest.raises(ValueError, match="t must have shape"):
        net(x, torch.rand(4))
