"""The training loop: it learns, resumes exactly, stops on non-finite values, logs, averages and loads back.

Data are Gaussian, x_0 ~ N(m, S) on 1x8x8 images with a smooth covariance, so the best achievable DSM loss is
known in closed form (docs/math.md §8.10): E_t tr(I - s^2 L C_t^{-1} L) / D, C_t = a^2 S + s^2 Sigma, L = Sigma^{1/2}.
The `tiny` U-Net keeps every run to seconds.
"""

import json
import math

import pytest
import scipy.integrate
import torch
from torch import nn

from sde_lib import NIVPSDE, GFFCovariance, IdentityCovariance
from training import TrainConfig, get_loss, load_checkpoint, load_model, loss_for, train
from training.checkpoint import list_checkpoints
from training.config import lr_factor
from training.data_order import BatchOrder
from training.ema import create_ema, ema_decay_at
from training.losses import EPS_T, NIDDPMLoss

SHAPE = (1, 8, 8)
DATA_COV = GFFCovariance(SHAPE, power=2.0)  # smooth images: a covariance far from the noise's
DATA_SCALE = 0.5


def gaussian_images(n: int, seed: int) -> torch.Tensor:
    """n images x = m + 0.5 Sigma_2^{1/2} z with a ramp mean m: N(m, S), S = 0.25 GFF(power 2)."""
    _, g = DATA_COV.sample(n, generator=torch.Generator().manual_seed(seed))
    ramp = torch.linspace(-0.5, 0.5, SHAPE[1])[None, None, :, None]
    return (DATA_SCALE * g + ramp).float()


def config(tmp_path, name="run", **kw) -> TrainConfig:
    base = dict(model="tiny", sde="nivp", loss="dsm", batch_size=16, lr=2e-3, warmup=5, save_every=0, log_every=5)
    return TrainConfig(workdir=str(tmp_path / name), **{**base, **kw})


pytestmark = pytest.mark.usefixtures("one_thread")


def optimal_dsm_loss(cfg: TrainConfig) -> float:
    S = DATA_SCALE**2 * DATA_COV.dense()
    Sigma = GFFCovariance(SHAPE, power=cfg.gff_power).dense()
    w, V = torch.linalg.eigh(Sigma)
    L = (V * w.sqrt()) @ V.T
    D = math.prod(SHAPE)

    def at(t: float) -> float:
        B = cfg.beta_min * t + 0.5 * t**2 * (cfg.beta_max - cfg.beta_min)
        a2, s2 = math.exp(-B), -math.expm1(-B)
        return float(D - s2 * torch.trace(L @ torch.linalg.solve(a2 * S + s2 * Sigma, L))) / D

    return scipy.integrate.quad(at, EPS_T, 1.0, limit=200)[0] / (1.0 - EPS_T)


def test_training_tiny_lowers_the_loss_towards_the_optimum(tmp_path):
    """100 steps: the excess of the DSM loss over its Bayes optimum (about 0.10 here) shrinks at least 5-fold
    from a fresh network's (about 9-fold in practice). The loss is evaluated on 1024 held-out images with fixed
    seeds (deterministic)."""
    from models import create_model

    cfg = config(tmp_path, steps=100, batch_size=32, log_every=50)
    result = train(cfg, progress=False, dataset=gaussian_images(512, 0))
    assert result["step"] == 100 and len(result["losses"]) == 100
    held_out = gaussian_images(1024, 1)
    sde, loss = NIVPSDE(cov=GFFCovariance(SHAPE, power=cfg.gff_power)), get_loss("dsm")

    def evaluate(model: nn.Module) -> float:
        with torch.no_grad():
            return sum(loss(model, sde, held_out, seed).item() for seed in range(4)) / 4

    optimum = optimal_dsm_loss(cfg)
    before, after = evaluate(create_model("tiny").eval()), evaluate(result["model"].eval())
    assert optimum < after
    assert after - optimum < (before - optimum) / 5, (before, after, optimum)


def _final_state(workdir) -> dict:
    ckpt = load_checkpoint(workdir)
    return {"model": ckpt["model"], "ema": ckpt["ema"]["weights"], "adam": ckpt["optimizer"]["state"]}


def test_resume_is_exact(tmp_path):
    """2N steps straight equal N steps + resume + N steps bitwise: weights, EMA, Adam moments and the losses.

    64 images in batches of 16 cross epoch boundaries; dropout exercises the restored torch RNG."""
    data = gaussian_images(64, 2)
    kw = dict(steps=12, model_overrides={"dropout": 0.2}, save_every=4, ema_decay=0.9)
    straight = train(config(tmp_path, "straight", **kw), progress=False, dataset=data)
    first = train(config(tmp_path, "resumed", **{**kw, "steps": 6}), progress=False, dataset=data)
    second = train(config(tmp_path, "resumed", **kw), progress=False, dataset=data)
    assert (first["step"], second["start_step"], second["step"]) == (6, 6, 12)
    assert first["losses"] + second["losses"] == straight["losses"]
    a, b = _final_state(tmp_path / "straight"), _final_state(tmp_path / "resumed")
    for part in a:
        flat_a, flat_b = a[part], b[part]
        assert flat_a.keys() == flat_b.keys()
        for k in flat_a:
            va, vb = flat_a[k], flat_b[k]
            items = va.items() if isinstance(va, dict) else [(None, va)]
            for name, tensor in items:
                other = vb[name] if name is not None else vb
                assert torch.equal(tensor, other), (part, k, name)


def test_resume_refuses_a_different_experiment(tmp_path):
    data = gaussian_images(64, 3)
    train(config(tmp_path, steps=2), progress=False, dataset=data)
    with pytest.raises(ValueError, match="different experiment.*lr"):
        train(config(tmp_path, steps=4, lr=1e-3), progress=False, dataset=data)
    # run-length fields may change: training continues to the new step count
    assert train(config(tmp_path, steps=4, log_every=1), progress=False, dataset=data)["start_step"] == 2


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_checkpoint(tmp_path):
    data = gaussian_images(64, 4)
    cfg = config(tmp_path, steps=4, save_every=2)
    train(cfg, progress=False, dataset=data)
    before = {p.name: p.read_bytes() for p in list_checkpoints(cfg.workdir)}
    poisoned = torch.full_like(data, float("nan"))
    with pytest.raises(FloatingPointError, match="step 5"):
        train(config(tmp_path, steps=8, save_every=1), progress=False, dataset=poisoned)
    assert {p.name: p.read_bytes() for p in list_checkpoints(cfg.workdir)} == before
    assert load_checkpoint(cfg.workdir)["step"] == 4


def test_metrics_log_and_warmup(tmp_path):
    """One JSONL line per log_every steps, whose loss is the mean of the window's step losses; lr ramps linearly."""
    cfg = config(tmp_path, steps=10, log_every=2, warmup=4, lr=1e-3)
    result = train(cfg, progress=False, dataset=gaussian_images(64, 5))
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4, 6, 8, 10]
    for r in lines:
        window = result["losses"][r["step"] - 2 : r["step"]]
        assert r["loss"] == pytest.approx(sum(window) / 2, rel=1e-12)
        # after k optimiser steps the scheduler holds lr * min(1, (k + 1) / warmup)
        assert r["lr"] == pytest.approx(1e-3 * min(1.0, (r["step"] + 1) / 4))
        assert r["images_per_s"] == pytest.approx(r["steps_per_s"] * cfg.batch_size)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_lr_decays_after_the_warmup_to_zero_at_the_last_step(tmp_path, schedule):
    cfg = config(tmp_path, steps=10, log_every=1, warmup=2, lr=1e-3, lr_schedule=schedule)
    train(cfg, progress=False, dataset=gaussian_images(64, 5))
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # after k optimiser steps the scheduler holds lr * lr_factor(k): the ramp, then 1 at k = warmup, then the decay
    assert lrs == pytest.approx([1e-3 * lr_factor(k, 2, 10, schedule) for k in range(1, 11)], rel=1e-12)
    p = [(k - 2) / 8 for k in range(2, 11)]
    decay = [(1 + math.cos(math.pi * q)) / 2 if schedule == "cosine" else 1 - q for q in p]
    assert [lr_factor(k, 2, 10, schedule) for k in range(2, 11)] == pytest.approx(decay, abs=1e-15)
    assert lrs[-1] == 0.0 and lr_factor(0, 2, 10, schedule) == 0.5  # step 1 is on the ramp
    assert [lr_factor(k, 2, 10, "constant") for k in range(4)] == [0.5, 1.0, 1.0, 1.0]


def test_ema_follows_its_recursion():
    """W_ema = W_0 after the first update, then W_ema <- d_n W_ema + (1 - d_n) W_n, d_n = min(d, (1 + n) / (10 + n))."""
    net, d = nn.Linear(3, 2), 0.9
    ema = create_ema(net, d)
    weights = [torch.randn(2, 3, generator=torch.Generator().manual_seed(k)) for k in range(30)]
    expected = weights[0].clone()
    for n, w in enumerate(weights):
        with torch.no_grad():
            net.weight.copy_(w)
        ema.update_parameters(net)
        if n > 0:
            d_n = min(d, (1 + n) / (10 + n))
            expected = d_n * expected + (1 - d_n) * w
    assert ema_decay_at(d, 1) == pytest.approx(2 / 11) and ema_decay_at(d, 500) == d
    torch.testing.assert_close(ema.module.weight, expected, rtol=1e-6, atol=1e-6)
    assert not ema.module.training and not ema.module.weight.requires_grad


def test_ema_update_equals_the_host_side_lerp_bitwise_in_every_dtype():
    """The decay computed on the device gives bitwise W_ema.lerp_(W, 1 - ema_decay_at(d, n)) (a Python float),
    for float32 and float64 parameters alike."""
    net, d = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2).double()), 0.9
    ema = create_ema(net, d)
    expected: list[torch.Tensor] = []
    for n in range(30):
        with torch.no_grad():
            for k, p in enumerate(net.parameters()):
                g = torch.Generator().manual_seed(100 * n + k)
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
        ema.update_parameters(net)
        if n == 0:
            expected = [p.detach().clone() for p in net.parameters()]
        else:
            for e, p in zip(expected, net.parameters()):
                e.lerp_(p.detach(), 1.0 - ema_decay_at(d, n))
    for e, p in zip(expected, ema.module.parameters()):
        assert p.dtype == e.dtype and torch.equal(p, e)


def test_batch_order_partitions_epochs_over_ranks_and_resumes():
    data = torch.zeros(50, *SHAPE)
    orders = [BatchOrder(data, batch=4, rank=r, world_size=2, seed=7) for r in range(2)]
    assert orders[0].batches_per_epoch == 6  # 25 indices per rank (drop_last) -> 6 batches of 4
    epoch0 = [[i for _ in range(6) for i in o.next_indices()] for o in orders]
    assert not set(epoch0[0]) & set(epoch0[1]) and len(set(epoch0[0])) == 24
    epoch1 = orders[0].next_indices()
    assert orders[0].state_dict() == {"seed": 7, "epoch": 1, "position": 1}
    assert epoch1 != epoch0[0][:4]  # a new permutation per epoch
    resumed = BatchOrder(data, batch=4, rank=0, world_size=2, seed=7)
    resumed.load_state_dict(orders[0].state_dict())
    assert resumed.next_indices() == orders[0].next_indices()
    with pytest.raises(ValueError, match="fewer than one batch"):
        BatchOrder(torch.zeros(5, *SHAPE), batch=4, world_size=2)


@pytest.mark.parametrize("noise", ["gff", "data"])
def test_load_model_rebuilds_the_ema_network_and_its_sde(tmp_path, noise):
    data = gaussian_images(64, 6)
    cfg = config(tmp_path, steps=3, noise=noise, ema_decay=0.5)
    result = train(cfg, progress=False, dataset=data)
    model, sde, loaded_cfg = load_model(cfg.workdir, ema=True)
    assert loaded_cfg == cfg and not model.training
    for name, p in model.state_dict().items():
        assert torch.equal(p, result["ema_model"].state_dict()[name])
    raw, _, _ = load_model(cfg.workdir, ema=False)
    assert any(not torch.equal(p, raw.state_dict()[k]) for k, p in model.state_dict().items())
    if noise == "gff":
        expected = GFFCovariance(SHAPE, power=cfg.gff_power, dc=cfg.dc).eigenvalues()
    else:  # the spectrum of the training images, stored in the checkpoint
        from sde_lib import SpectralCovariance

        expected = SpectralCovariance.from_data(data.double()).eigenvalues()
    torch.testing.assert_close(sde.cov.eigenvalues(), expected, rtol=1e-12, atol=0)


def test_isotropic_sde_ignores_the_noise_setting(tmp_path):
    cfg = config(tmp_path, steps=1, sde="vp", noise="data")
    train(cfg, progress=False, dataset=gaussian_images(32, 8))
    _, sde, _ = load_model(cfg.workdir)
    assert isinstance(sde.cov, IdentityCovariance) and load_checkpoint(cfg.workdir)["noise_spectrum"] is None


def test_sample_grid_png(tmp_path):
    """sample_every writes samples/step_<k>.png: a square grid of sample_count images (1-pixel padding)."""
    from PIL import Image

    cfg = config(tmp_path, steps=4, sample_every=2, sample_count=9, sample_steps=3)
    train(cfg, progress=False, dataset=gaussian_images(32, 9))
    pngs = sorted(p.name for p in (tmp_path / "run" / "samples").iterdir())
    assert pngs == ["step_00000002.png", "step_00000004.png"]
    with Image.open(tmp_path / "run" / "samples" / pngs[-1]) as im:
        assert im.size == (3 * (8 + 1) + 1, 3 * (8 + 1) + 1)


def test_config_validation():
    with pytest.raises(ValueError, match="sde"):
        TrainConfig(workdir="w", sde="ddpm")
    with pytest.raises(ValueError, match="loss"):
        TrainConfig(workdir="w", loss="l1")
    with pytest.raises(ValueError, match="noise"):
        TrainConfig(workdir="w", noise="pink")
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(workdir="w", ema_decay=1.0)
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(workdir="w", lr_schedule="step")
    with pytest.raises(ValueError, match="needs the continuous loss 'dsm'"):
        TrainConfig(workdir="w", loss="ddpm", time_sampling="lognormal")
    with pytest.raises(ValueError, match="lognormal_std"):
        TrainConfig(workdir="w", time_sampling="lognormal", lognormal_std=0.0)
    lognormal = loss_for(TrainConfig(workdir="w", time_sampling="lognormal", lognormal_mean=-1.0))
    assert (lognormal.time_sampling, lognormal.lognormal) == ("lognormal", (-1.0, 1.2))
    assert isinstance(loss_for(TrainConfig(workdir="w", loss="ddpm")), NIDDPMLoss)
    with pytest.raises(ValueError, match="unknown TrainConfig"):
        TrainConfig.from_dict({"workdir": "w", "epochs": 3})
    cfg = TrainConfig(workdir="w", model_overrides={"dropout": 0.0})
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
