"""The diffusion package: denoiser presets and configs, schedules, objectives, samplers.

Samplers are checked with oracle denoisers whose output is known exactly:

* a single known data point ``x0*``: the exact noise at ``x_t`` is
  ``(x_t - sqrt(ab) x0*) / sqrt(1 - ab)``, the exact flow velocity at ``x_s`` is ``(x_s - x0*) / s``;
  every sampler must return ``x0*`` for any step count, which holds only if its last update lands
  on the clean end (``alpha_bar = 1`` / ``s = 0``). The deterministic samplers then also keep the
  sample exactly on the forward path of the start noise ``z``, so at every call the network must
  be shown ``sqrt(ab_t) x0* + sqrt(1 - ab_t) z`` for the very timestep it is told: this is what
  catches a sampler that leaves its sample at one noise level and evaluates the network at another
  (MONAI 1.6.1's DDIMScheduler does, for 1 < steps < T);
* Gaussian data ``N(mu, sd^2)``: the exact posterior mean is linear in ``x_t``, and the
  deterministic samplers converge to the probability-flow map ``x0 = mu + sd * z`` of the start
  noise ``z`` as the steps grow (Heun faster than Euler).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from LatentSRLib.diffusion import (
    CLEAN,
    DENOISER_PRESETS,
    ConditionalDenoiser,
    DDPMObjective,
    NoiseSchedule,
    RectifiedFlowObjective,
    build_denoiser,
    count_parameters,
    ddim_timesteps,
    flow_times,
    objective_from_dict,
    sample,
)

# --------------------------------------------------------------------------------------- denoiser


@pytest.mark.parametrize(
    ("preset", "low", "high"),
    [("tiny", 20_000, 1_000_000), ("small", 5e6, 15e6), ("base", 35e6, 50e6), ("paper", 90e6, 115e6)],
)
@pytest.mark.parametrize("latent_channels", [3, 4])
def test_preset_parameter_counts_are_in_their_documented_ranges(preset, low, high, latent_channels):
    with torch.device("meta"):  # nothing is allocated: the 100M preset costs nothing
        net = build_denoiser(preset, latent_channels)
    assert low <= count_parameters(net) <= high
    assert net.config["preset"] == preset


@pytest.mark.parametrize("latent_channels", [1, 4, 32])
def test_tiny_denoiser_maps_latent_and_condition_to_latent_shape(latent_channels):
    torch.manual_seed(0)
    net = build_denoiser("tiny", latent_channels)
    x_t = torch.randn(2, latent_channels, 16, 24)
    condition = torch.randn(2, latent_channels, 16, 24)
    out = net(x_t, torch.tensor([3.5, 999.0]), condition)
    assert out.shape == x_t.shape and out.dtype == x_t.dtype
    assert net(x_t, 500.0, condition).shape == x_t.shape  # a scalar time is broadcast over the batch


def test_denoiser_names_the_size_multiple_and_checks_shapes():
    net = build_denoiser("tiny", 4)
    assert net.size_multiple == 4
    with pytest.raises(ValueError, match="multiples of 4"):
        net(torch.zeros(1, 4, 18, 16), torch.zeros(1), torch.zeros(1, 4, 18, 16))
    with pytest.raises(ValueError, match="expected 4 latent channels"):
        net(torch.zeros(1, 3, 16, 16), torch.zeros(1), torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="same shape"):
        net(torch.zeros(1, 4, 16, 16), torch.zeros(1), torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        net(torch.zeros(2, 4, 16, 16), torch.zeros(3), torch.zeros(2, 4, 16, 16))


def test_denoiser_config_round_trips_through_json_to_the_same_network():
    torch.manual_seed(0)
    net = build_denoiser("tiny", 3, num_res_blocks=2)
    config = json.loads(json.dumps(net.config))
    assert config == net.config
    assert config["preset"] == "tiny+overrides"
    assert config["network"]["in_channels"] == 6 and config["network"]["out_channels"] == 3
    again = ConditionalDenoiser.from_config(config)
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}
    again.load_state_dict(net.state_dict())
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(again(x, torch.tensor([10.0]), x), net(x, torch.tensor([10.0]), x))
    # a stored config never consults the presets again
    assert ConditionalDenoiser.from_config(config).config == config


def test_denoiser_bad_arguments_name_the_valid_choices():
    with pytest.raises(ValueError, match="tiny, compact, small, base, paper"):
        build_denoiser("huge", 4)
    with pytest.raises(ValueError, match="valid keys are channels"):
        build_denoiser("tiny", 4, channel=(8, 16))
    with pytest.raises(ValueError, match="latent_channels"):
        build_denoiser("tiny", 0)
    bad = build_denoiser("tiny", 4).config
    bad["network"]["in_channels"] = 4
    with pytest.raises(ValueError, match="in_channels must be 8"):
        ConditionalDenoiser.from_config(bad)
    custom = build_denoiser({"channels": (8, 16), "attention_levels": (False, True), "norm_num_groups": 8,
                             "num_head_channels": 8, "num_res_blocks": 1}, 2)
    assert custom.config["preset"] == "custom" and custom.size_multiple == 2
    assert set(DENOISER_PRESETS) == {"tiny", "compact", "small", "base", "paper"}


# -------------------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_schedule_runs_from_nearly_clean_to_nearly_pure_noise(kind):
    schedule = NoiseSchedule(kind, 1000)
    ab = schedule.alphas_cumprod
    assert ab.dtype == torch.float64 and ab.shape == (1000,)
    assert bool((ab[1:] < ab[:-1]).all())
    assert 0.999 < float(ab[0]) < 1.0
    assert 0.0 < float(ab[-1]) < 1e-3
    assert bool((schedule.betas > 0).all()) and float(schedule.betas.max()) <= 0.999
    assert float(schedule.alpha_bar(CLEAN)) == 1.0
    assert torch.equal(schedule.alpha_bar(torch.tensor([CLEAN, 0, 999])), torch.cat([torch.ones(1), ab[[0, 999]]]))
    with pytest.raises(ValueError, match=r"\[-1, 999\]"):
        schedule.alpha_bar(1000)


def test_schedule_round_trips_through_json():
    schedule = NoiseSchedule("linear", 50, beta_start=1e-3, beta_end=5e-2)
    again = NoiseSchedule.from_dict(json.loads(json.dumps(schedule.to_dict())))
    assert again == schedule and torch.equal(again.alphas_cumprod, schedule.alphas_cumprod)
    with pytest.raises(ValueError, match="cosine, linear"):
        NoiseSchedule("sigmoid")
    with pytest.raises(ValueError, match="valid keys are kind"):
        NoiseSchedule.from_dict({"kind": "cosine", "steps": 10})


def test_cosine_schedule_matches_monai_and_the_closed_form():
    from monai.networks.schedulers.scheduler import NoiseSchedules

    schedule = NoiseSchedule("cosine", 1000)
    # closed form of Nichol & Dhariwal where no beta is clipped: alpha_bar_k = f(k+1) / f(0)
    f = lambda u: math.cos((u / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for k in (0, 1, 10, 500, 990, 998):
        assert float(schedule.alphas_cumprod[k]) == pytest.approx(f(k + 1) / f(0), rel=1e-12)
    assert float(schedule.betas[-1]) == 0.999  # the clipping, only at the last step for T = 1000
    monai_betas, _, monai_ab = NoiseSchedules["cosine"](1000)  # float32 arithmetic
    assert torch.allclose(schedule.betas, monai_betas.double(), rtol=3e-3, atol=1e-7)
    assert torch.allclose(schedule.alphas_cumprod, monai_ab.double(), rtol=1e-4, atol=1e-6)
    linear = NoiseSchedule("linear", 1000)
    assert torch.allclose(linear.betas, torch.linspace(1e-4, 2e-2, 1000, dtype=torch.float64), rtol=1e-6)


# -------------------------------------------------------------------------------------- timesteps


@pytest.mark.parametrize(
    ("T", "S", "expected"),
    [
        (1000, 4, [999, 749, 499, 249]),
        (1000, 1, [999]),
        (1000, 1000, list(range(999, -1, -1))),
        (50, 7, [49, 42, 35, 28, 20, 13, 6]),
        (1000, 3, [999, 666, 332]),
    ],
)
def test_ddim_timesteps_expected_values(T, S, expected):
    assert ddim_timesteps(T, S) == expected


def test_ddim_timesteps_stride_the_whole_schedule():
    for T in (10, 50, 999, 1000):
        for S in {S for S in (1, 2, 3, 7, 16, T // 3, T - 1, T) if S <= T}:
            ts = ddim_timesteps(T, S)
            assert len(ts) == S and ts[0] == T - 1
            assert all(a > b for a, b in zip(ts, ts[1:]))
            assert 0 <= ts[-1] <= math.ceil(T / S) - 1  # the last stride ends near the clean end
    with pytest.raises(ValueError, match=r"1\.\.1000"):
        ddim_timesteps(1000, 0)
    with pytest.raises(ValueError, match=r"1\.\.1000"):
        ddim_timesteps(1000, 1001)


def test_ddim_timesteps_match_diffusers_trailing_spacing():
    diffusers = pytest.importorskip("diffusers")
    for T, S in [(1000, 4), (1000, 16), (1000, 100), (50, 7), (999, 7)]:
        scheduler = diffusers.DDIMScheduler(num_train_timesteps=T, timestep_spacing="trailing")
        scheduler.set_timesteps(S)
        assert scheduler.timesteps.tolist() == ddim_timesteps(T, S)


def test_flow_times_run_exactly_from_one_to_zero():
    assert flow_times(1) == [1.0, 0.0]
    assert flow_times(4) == [1.0, 0.75, 0.5, 0.25, 0.0]
    with pytest.raises(ValueError, match=">= 1"):
        flow_times(0)


# --------------------------------------------------------------------------------- oracle sampling


# The oracles are written from the formulas, not with the objectives' own conversions, so the
# tests check the library against an independent statement of DDPM and rectified flow.


def _alpha_bar(objective, model_time, like):
    """``alpha_bar`` of the timesteps behind a DDPM model time (``t * 1000 / T``), shaped like ``like``."""
    t = torch.round(model_time.double() * objective.num_train_timesteps / 1000).long()
    return objective.schedule.alpha_bar(t).view(-1, 1, 1, 1).to(like.dtype)


def _flow_time(model_time, like):
    return (model_time.double() / 1000).view(-1, 1, 1, 1).to(like.dtype)


def _ddpm_output(prediction, x0, eps, ab):
    """What a DDPM network should output, given the clean latent and the noise at ``x_t``."""
    return {"epsilon": eps, "x0": x0, "v": ab.sqrt() * eps - (1 - ab).sqrt() * x0}[prediction]


class PointOracle(torch.nn.Module):
    """Exact denoiser when all data is the single point ``x0_star`` (any objective, any prediction)."""

    def __init__(self, objective, x0_star: torch.Tensor) -> None:
        super().__init__()
        self.objective, self.x0_star = objective, x0_star

    def forward(self, x_t, model_time, condition):
        obj, x0 = self.objective, self.x0_star.expand_as(x_t)
        if isinstance(obj, RectifiedFlowObjective):
            # x_s = (1 - s) x0 + s n  =>  v = n - x0 = (x_s - x0) / s
            return (x_t - x0) / _flow_time(model_time, x_t)
        ab = _alpha_bar(obj, model_time, x_t)
        eps = (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()
        return _ddpm_output(obj.prediction, x0, eps, ab)


class GaussianOracle(torch.nn.Module):
    """Exact denoiser for data ``N(mu, sd^2)`` per element: posterior mean of x0 given x_t."""

    def __init__(self, objective, mu: float, sd: float) -> None:
        super().__init__()
        self.objective, self.mu, self.sd = objective, mu, sd

    def forward(self, x_t, model_time, condition):
        obj, mu, var = self.objective, self.mu, self.sd**2
        if isinstance(obj, RectifiedFlowObjective):
            s = _flow_time(model_time, x_t)
            x0 = mu + (1 - s) * var / ((1 - s) ** 2 * var + s**2) * (x_t - (1 - s) * mu)
            return (x_t - x0) / s
        ab = _alpha_bar(obj, model_time, x_t)
        x0 = mu + ab.sqrt() * var / (ab * var + 1 - ab) * (x_t - ab.sqrt() * mu)
        eps = (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()
        return _ddpm_output(obj.prediction, x0, eps, ab)


def _x0_star(dtype=torch.float64):
    g = torch.Generator().manual_seed(7)
    return (torch.randn(2, 4, 16, 16, generator=g) * 0.8 + 0.3).to(dtype)


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
@pytest.mark.parametrize("steps", [1, 4, 50])
def test_ddim_with_an_exact_denoiser_recovers_the_data_point(prediction, steps):
    # float64: recovering x0 from an epsilon prediction at the noisiest cosine step divides by
    # sqrt(alpha_bar) ~ 5e-5, which float32 rounding cannot survive (a property of epsilon-prediction)
    objective = DDPMObjective(prediction, NoiseSchedule("cosine", 1000))
    x0 = _x0_star()
    condition = torch.zeros_like(x0)
    out, trace = sample(objective, PointOracle(objective, x0), condition, steps=steps,
                        generator=torch.Generator().manual_seed(0), return_trajectory=True)
    assert out.shape == x0.shape and out.dtype == torch.float64
    assert (out - x0).abs().max() < 1e-4
    expected = ddim_timesteps(1000, steps)
    assert trace.sampler == "ddim" and trace.times == expected
    assert trace.next_times == expected[1:] + [CLEAN]
    assert trace.next_alpha_bars[-1] == 1.0  # the final update lands on the data
    assert trace.model_times == [float(t) for t in expected]


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
@pytest.mark.parametrize(("sampler", "eta"), [("ddpm", 0.0), ("ddim", 0.5)])
def test_stochastic_samplers_also_end_on_the_data_point(prediction, sampler, eta):
    objective = DDPMObjective(prediction, NoiseSchedule("linear", 50))
    x0 = _x0_star()
    out, trace = sample(objective, PointOracle(objective, x0), torch.zeros_like(x0), steps=7, sampler=sampler,
                        eta=eta, generator=torch.Generator().manual_seed(1), return_trajectory=True)
    assert (out - x0).abs().max() < 1e-4
    assert trace.times == [49, 42, 35, 28, 20, 13, 6] and trace.next_alpha_bars[-1] == 1.0
    assert trace.model_times == [t * 20.0 for t in trace.times]  # model time t * 1000 / T


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_float32_sampling_recovers_the_data_point(prediction):
    objective = DDPMObjective(prediction)
    x0 = _x0_star(torch.float32)
    for steps in (1, 4, 100):
        out = sample(objective, PointOracle(objective, x0), torch.zeros_like(x0), steps=steps,
                     generator=torch.Generator().manual_seed(0))
        assert out.dtype == torch.float32 and (out - x0).abs().max() < 1e-4


class PathRecorder(PointOracle):
    """:class:`PointOracle` that records how far each input is from one forward path.

    The path's noise is the one implied by the first input: the start noise for a flow (``s = 1``
    is pure noise), and for DDPM the noise ``z'`` with ``x = sqrt(ab) x0* + sqrt(1 - ab) z'`` at
    ``T-1`` (the schedule's noisiest step still holds a little signal, ``ab ~ 2e-9`` for cosine).
    """

    def __init__(self, objective, x0_star) -> None:
        super().__init__(objective, x0_star)
        self.noise, self.deviations = None, []

    def forward(self, x_t, model_time, condition):
        obj, x0 = self.objective, self.x0_star
        if isinstance(obj, RectifiedFlowObjective):
            s = _flow_time(model_time, x_t)
            self.noise = x_t if self.noise is None else self.noise
            expected = (1 - s) * x0 + s * self.noise
        else:
            ab = _alpha_bar(obj, model_time, x_t)
            if self.noise is None:  # the noise implied when the clean latent is x0*
                self.noise = (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()
            expected = ab.sqrt() * x0 + (1 - ab).sqrt() * self.noise
        self.deviations.append((x_t - expected).abs().max().item())
        return super().forward(x_t, model_time, condition)


@pytest.mark.parametrize(
    ("objective", "sampler", "steps"),
    [
        (DDPMObjective("epsilon"), "ddim", 4),
        (DDPMObjective("v", NoiseSchedule("linear", 50)), "ddim", 7),
        (DDPMObjective("x0"), "ddim", 100),
        (RectifiedFlowObjective(), "euler", 5),
        (RectifiedFlowObjective(), "heun", 5),
    ],
    ids=["eps-4", "v-7-of-50", "x0-100", "euler-5", "heun-5"],
)
def test_network_always_sees_the_noise_level_it_is_told(objective, sampler, steps):
    x0 = _x0_star()
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    recorder = PathRecorder(objective, x0)
    out = sample(objective, recorder, torch.zeros_like(x0), steps=steps, sampler=sampler, noise=z)
    assert len(recorder.deviations) == (2 * steps - 1 if sampler == "heun" else steps)
    assert max(recorder.deviations) < 1e-9
    assert (out - x0).abs().max() < 1e-9


def test_ddim_follows_the_probability_flow_of_gaussian_data():
    # with the exact denoiser of N(mu, sd^2) data, deterministic DDIM converges to the ODE map
    # z -> mu + sd * z (with few steps it contracts towards mu: DDIM's known under-dispersion)
    mu, sd = 0.7, 0.3
    objective = DDPMObjective("x0")
    z = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    exact = mu + sd * z
    errors = [(sample(objective, GaussianOracle(objective, mu, sd), torch.zeros_like(z), steps=s, noise=z)
               - exact).abs().max().item() for s in (4, 50, 1000)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.02


def test_ddpm_equals_ddim_with_eta_one():
    objective = DDPMObjective("v", NoiseSchedule("cosine", 100))
    oracle = GaussianOracle(objective, 0.2, 0.5)
    condition = torch.zeros(2, 3, 8, 8, dtype=torch.float64)
    def run(**kwargs):
        return sample(objective, oracle, condition, steps=9, generator=torch.Generator().manual_seed(5), **kwargs)

    ddpm, ddim = run(sampler="ddpm"), run(sampler="ddim", eta=1.0)
    assert torch.allclose(ddpm, ddim, atol=1e-10)
    deterministic = run()
    assert not torch.allclose(ddpm, deterministic)


@pytest.mark.parametrize("sampler", ["euler", "heun"])
@pytest.mark.parametrize("steps", [1, 4, 50])
def test_flow_samplers_with_an_exact_velocity_recover_the_data_point(sampler, steps):
    objective = RectifiedFlowObjective()
    x0 = _x0_star(torch.float32)
    out, trace = sample(objective, PointOracle(objective, x0), torch.zeros_like(x0), steps=steps, sampler=sampler,
                        generator=torch.Generator().manual_seed(0), return_trajectory=True)
    assert (out - x0).abs().max() < 1e-4
    grid = flow_times(steps)
    assert trace.times == grid[:-1] and trace.next_times == grid[1:] and trace.next_times[-1] == 0.0
    assert trace.num_evaluations == (steps if sampler == "euler" else 2 * steps - 1)
    assert trace.model_times[0] == 1000.0 and min(trace.model_times) > 0.0  # never evaluated at s = 0


def test_heun_is_more_accurate_than_euler_on_gaussian_data():
    mu, sd = -0.4, 0.6
    objective = RectifiedFlowObjective()
    z = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    exact = mu + sd * z  # the exact flow map of N(mu, sd^2) data

    def error(sampler, steps):
        oracle = GaussianOracle(objective, mu, sd)
        out = sample(objective, oracle, torch.zeros_like(z), steps=steps, sampler=sampler, noise=z)
        return (out - exact).abs().max().item()

    assert error("euler", 4) > error("euler", 16) > error("euler", 64)
    assert error("heun", 16) < error("euler", 16) / 5
    assert error("heun", 64) < 1e-3


def test_sampling_uses_the_given_noise_or_the_generator():
    objective = DDPMObjective("x0")
    oracle = GaussianOracle(objective, 0.0, 1.0)
    condition = torch.zeros(1, 2, 8, 8)
    a = sample(objective, oracle, condition, steps=3, generator=torch.Generator().manual_seed(9))
    b = sample(objective, oracle, condition, steps=3, generator=torch.Generator().manual_seed(9))
    noise = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(9))
    c = sample(objective, oracle, condition, steps=3, noise=noise)
    assert torch.equal(a, b) and torch.equal(a, c)


def test_sampling_bad_arguments_name_the_valid_choices():
    ddpm, flow = DDPMObjective(), RectifiedFlowObjective()
    condition = torch.zeros(1, 1, 4, 4)
    oracle = GaussianOracle(ddpm, 0.0, 1.0)
    with pytest.raises(ValueError, match="ddim, ddpm"):
        sample(ddpm, oracle, condition, steps=2, sampler="euler")
    with pytest.raises(ValueError, match="euler, heun"):
        sample(flow, oracle, condition, steps=2, sampler="ddim")
    with pytest.raises(ValueError, match=r"1\.\.1000"):
        sample(ddpm, oracle, condition, steps=1001)
    with pytest.raises(ValueError, match=r"1\.\.1000"):
        sample(ddpm, oracle, condition, steps=0)
    with pytest.raises(ValueError, match="only to the ddim"):
        sample(flow, oracle, condition, steps=2, eta=0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sample(ddpm, oracle, condition, steps=2, eta=1.5)
    with pytest.raises(ValueError, match="condition's shape"):
        sample(ddpm, oracle, condition, steps=2, noise=torch.zeros(1, 1, 8, 8))


# ------------------------------------------------------------------------------------- objectives


@pytest.mark.parametrize(
    "objective",
    [DDPMObjective("epsilon", loss="l2"), DDPMObjective("x0"), DDPMObjective("v", NoiseSchedule("linear", 200)),
     RectifiedFlowObjective(), RectifiedFlowObjective("logit_normal", "l1")],
    ids=["eps", "x0", "v", "flow", "flow-logit-normal"],
)
def test_exact_denoiser_has_zero_training_loss(objective):
    # the targets, the noising and the model time agree with each other (the model time is
    # float32, so flow times come back to the oracle with float32 rounding: hence 1e-6, not 0)
    x0 = _x0_star()
    loss = objective.training_loss(PointOracle(objective, x0), x0, torch.zeros_like(x0),
                                   generator=torch.Generator().manual_seed(2))
    assert loss.ndim == 0 and float(loss) < 1e-6


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
def test_predict_x0_and_eps_invert_the_target(prediction):
    objective = DDPMObjective(prediction, NoiseSchedule("linear", 100))
    g = torch.Generator().manual_seed(0)
    x0, eps = (torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64) for _ in range(2))
    t = torch.tensor([0, 50, 99])
    x_t = objective.add_noise(x0, eps, t)
    x0_hat, eps_hat = objective.predict_x0_and_eps(objective.target(x0, eps, t), x_t, t)
    assert torch.allclose(x0_hat, x0, atol=1e-9) and torch.allclose(eps_hat, eps, atol=1e-9)


def _train(objective, steps=60):
    torch.manual_seed(0)
    net = build_denoiser("tiny", 4)
    g = torch.Generator().manual_seed(1)
    x0 = torch.nn.functional.avg_pool2d(torch.randn(4, 4, 16, 16, generator=g), 3, 1, 1) * 2
    condition = x0  # the simplest "super-resolution" problem: the condition is the answer
    optimiser = torch.optim.Adam(net.parameters(), lr=2e-3)
    losses = []
    for _ in range(steps):
        loss = objective.training_loss(net, x0, condition, generator=g)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize(
    "objective",
    [DDPMObjective("epsilon", loss="l2"), DDPMObjective("v", loss="l2"), RectifiedFlowObjective()],
    ids=["ddpm-eps", "ddpm-v", "rectified-flow"],
)
def test_tiny_denoiser_learns(objective):
    losses = _train(objective)
    assert all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.6 * first


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
def test_min_snr_weights_match_the_formula(prediction):
    gamma = 5.0
    schedule = NoiseSchedule("cosine", 1000)
    objective = DDPMObjective(prediction, schedule, min_snr_gamma=gamma)
    t = torch.tensor([0, 10, 300, 700, 999])
    weights = objective.loss_weights(t)
    assert bool(torch.isfinite(weights).all()) and bool((weights > 0).all())
    for k, w in zip(t.tolist(), weights.tolist()):
        ab = float(schedule.alphas_cumprod[k])
        snr = ab / (1 - ab)
        expected = {"epsilon": min(snr, gamma) / snr, "x0": min(snr, gamma), "v": min(snr, gamma) / (snr + 1)}
        assert w == pytest.approx(expected[prediction], rel=1e-9)
    assert torch.equal(DDPMObjective(prediction).loss_weights(t), torch.ones(5, dtype=torch.float64))


def test_min_snr_weights_are_applied_per_sample():
    objective = DDPMObjective("x0", loss="l2", min_snr_gamma=2.0)
    x0 = torch.randn(6, 2, 4, 4, generator=torch.Generator().manual_seed(0))

    def zero(x_t, model_time, condition):
        return torch.zeros_like(x_t)

    loss = objective.training_loss(zero, x0, x0, generator=torch.Generator().manual_seed(3))
    t = torch.randint(0, 1000, (6,), generator=torch.Generator().manual_seed(3))  # the draw made inside
    expected = (objective.loss_weights(t).float() * x0.square().flatten(1).mean(1)).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("fraction, terminal", [(0.0, 0), (0.5, 4), (1.0, 8)])
def test_terminal_fraction_trains_that_share_at_the_sampler_start(fraction, terminal):
    """A one-step sampler starts at t = T - 1: terminal_fraction puts that share of each batch there,
    the rest drawn uniformly exactly as before (same generator draws)."""
    objective = DDPMObjective("x0", terminal_fraction=fraction)
    seen = []

    def record(x_t, model_time, condition):
        seen.append(model_time.clone())
        return torch.zeros_like(x_t)

    x0 = torch.randn(8, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    objective.training_loss(record, x0, x0, generator=torch.Generator().manual_seed(3))
    uniform = torch.randint(0, 1000, (8,), generator=torch.Generator().manual_seed(3))  # the draw made inside
    expected = uniform.clone()
    expected[:terminal] = 999
    torch.testing.assert_close(seen[0], objective.model_time(expected))
    assert objective_from_dict(json.loads(json.dumps(objective.to_dict()))).terminal_fraction == fraction
    with pytest.raises(ValueError, match=r"terminal_fraction must be in \[0, 1\]"):
        DDPMObjective(terminal_fraction=1.5)


def test_an_objective_saved_before_terminal_fraction_loads_with_zero():
    saved = DDPMObjective().to_dict()
    del saved["terminal_fraction"]
    assert objective_from_dict(saved).terminal_fraction == 0.0


@pytest.mark.parametrize(
    "objective",
    [DDPMObjective("v", NoiseSchedule("linear", 500, 1e-4, 3e-2), "l2", 5.0), DDPMObjective(),
     RectifiedFlowObjective("logit_normal", "l1", 0.5, 1.2)],
)
def test_objectives_round_trip_through_json(objective):
    d = json.loads(json.dumps(objective.to_dict()))
    again = objective_from_dict(d)
    assert type(again) is type(objective) and again.to_dict() == objective.to_dict()


def test_objective_bad_arguments_name_the_valid_choices():
    with pytest.raises(ValueError, match="epsilon, x0, v"):
        DDPMObjective("sample")
    with pytest.raises(ValueError, match="l1, l2"):
        DDPMObjective(loss="huber")
    with pytest.raises(ValueError, match="> 0"):
        DDPMObjective(min_snr_gamma=0)
    with pytest.raises(ValueError, match="uniform, logit_normal"):
        RectifiedFlowObjective("beta")
    with pytest.raises(ValueError, match="ddpm, rectified_flow"):
        objective_from_dict({"kind": "edm"})
    with pytest.raises(ValueError, match="valid keys are kind"):
        objective_from_dict({"kind": "ddpm", "predict": "x0"})
    with pytest.raises(ValueError, match="same"):
        DDPMObjective().training_loss(lambda x, t, c: x, torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 8, 8))


def test_ema_warms_up_then_holds_its_decay():
    from LatentSRLib.training.sr import ema_decay_at, make_ema

    assert ema_decay_at(0.999, 0) == pytest.approx(0.1)
    assert ema_decay_at(0.999, 90) == pytest.approx(0.91)
    assert ema_decay_at(0.999, 10**6) == 0.999
    network = torch.nn.Linear(1, 1, bias=False)
    ema = make_ema(network, 0.999)
    expected = None
    for step, value in enumerate([1.0, 5.0, 3.0, -2.0]):
        network.weight.data.fill_(value)
        ema.update_parameters(network)
        # the first update copies; update n (1-based count n) blends with the warmed-up decay
        expected = value if expected is None else ema_decay_at(0.999, step) * expected + (1 - ema_decay_at(0.999, step)) * value
        assert ema.module.weight.item() == pytest.approx(expected)
    # a fixed 0.999 would still sit near the first value; the warm-up follows the weights
    assert abs(ema.module.weight.item() - 1.0) > 1.0
    assert make_ema(network, 0) is None


def test_condition_skip_starts_at_the_condition_and_round_trips():
    """With the skip an untrained x0 network returns the LR latent exactly (MONAI zero-initialises the
    UNet's output layer): sampling starts from the LR image, not from noise."""
    from LatentSRLib.diffusion import ConditionalDenoiser, build_denoiser

    torch.manual_seed(0)
    skip = build_denoiser("tiny", 4, condition_skip=True)
    x_t, condition = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16)
    assert torch.equal(skip(x_t, torch.tensor([999.0, 10.0]), condition), condition)
    plain = build_denoiser("tiny", 4)
    assert torch.equal(plain(x_t, torch.tensor([999.0, 10.0]), condition), torch.zeros_like(condition))
    # trained weights: output = condition + what the UNet alone gives
    with torch.no_grad():
        for p in skip.parameters():
            p.add_(0.05 * torch.randn_like(p))
    rebuilt = ConditionalDenoiser.from_config(skip.config)
    rebuilt.load_state_dict(skip.state_dict())
    assert skip.config["condition_skip"] is True and rebuilt.condition_skip
    t = torch.tensor([500.0, 500.0])
    assert torch.allclose(rebuilt(x_t, t, condition), skip.unet(torch.cat([x_t, condition], 1), t) + condition)
    # a model saved before the option existed has no key and no skip
    old = {k: v for k, v in plain.config.items() if k != "condition_skip"}
    assert ConditionalDenoiser.from_config(old).condition_skip is False


def test_condition_skip_is_refused_for_objectives_that_do_not_predict_x0():
    from types import SimpleNamespace

    from LatentSRLib.training.sr import make_denoiser

    setup = SimpleNamespace(latent_channels=4)
    assert make_denoiser("tiny", setup, condition_skip=True, objective={"kind": "ddpm", "prediction": "x0"}).condition_skip
    for objective in ({"kind": "ddpm", "prediction": "epsilon"}, {"kind": "ddpm", "prediction": "v"},
                      {"kind": "rectified_flow"}):
        with pytest.raises(ValueError, match="x0"):
            make_denoiser("tiny", setup, condition_skip=True, objective=objective)
