"""The paper's analyses (hallucination maps, latent fidelity, Bland-Altman, tumour ROI, AE-ceiling
regression) on a real BraTS FLAIR slice and its tumour mask where possible, against independent
numpy/scipy computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage, stats

from LatentSRLib.metrics import (
    BACKGROUND_LEVEL,
    bland_altman,
    ceiling_regression,
    foreground_mask,
    hallucination_map,
    hallucination_maps,
    latent_fidelity,
    latent_fidelity_by_scale,
    mean_intensities,
    pool_latents,
    psnr,
    region_metrics,
    save_bland_altman_figure,
    save_ceiling_regression_figure,
    save_hallucination_figure,
    scores_by_region,
    ssim,
)
from LatentSRLib.io import read_image
from LatentSRLib.transforms.degradations import BicubicDownUp
from LatentSRLib.transforms.intensity import PercentileWindow

SLICE = 77
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def brain(brats_flair, brats_tumour_mask) -> dict[str, np.ndarray]:
    """Real data: FLAIR windowed to [0, 1] over the volume's brain voxels, axial slices 75..79
    (5, 240, 240) float64 as the TRUE images; 4x bicubic down-up as an SR stand-in; 2x bicubic
    down-up as a mild "autoencoder reconstruction"; the approximate whole-tumour mask (5, 240, 240)."""
    volume, _ = PercentileWindow(nonzero=True)(read_image(brats_flair).array.astype(np.float32))
    hr = np.asarray(volume[SLICE - 2 : SLICE + 3], dtype=np.float64)
    mask = np.asarray(read_image(brats_tumour_mask).array[SLICE - 2 : SLICE + 3]).astype(np.int64)
    return {
        "hr": hr,
        "sr": np.asarray(BicubicDownUp(scale=4)(hr), dtype=np.float64),
        "ae": np.asarray(BicubicDownUp(scale=2)(hr), dtype=np.float64),
        "mask": mask,
    }


def _assert_png(path) -> None:
    data = path.read_bytes()
    assert len(data) > 1000 and data.startswith(PNG_SIGNATURE)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind


# ---------------------------------------------------------------- hallucination


def test_perfect_reconstruction_has_no_hallucinated_or_lost_pixel(brain):
    hr, ae = brain["hr"][2], brain["ae"][2]
    result = hallucination_map(hr, hr, ae)
    assert result.hallucinated_fraction == 0 and result.lost_fraction == 0
    assert result.mean_abs_difference == 0
    assert result.labels.dtype == np.int8 and result.labels.shape == hr.shape and not result.labels.any()
    # also with an exact autoencoder (tau = 0): the comparisons are strict
    exact = hallucination_map(hr, hr, hr)
    assert exact.tau == 0 and exact.hallucinated_fraction == 0 and exact.lost_fraction == 0


def test_noise_floor_is_mean_plus_k_sd_of_the_autoencoder_error(brain):
    hr, ae, sr = brain["hr"][2], brain["ae"][2], brain["sr"][2]
    region = ndimage.binary_fill_holes(hr > BACKGROUND_LEVEL)
    error = np.abs(ae - hr)[region]
    results = {k: hallucination_map(sr, hr, ae, k=k) for k in (1.0, 2.0, 3.0)}
    for k, result in results.items():
        assert result.tau == pytest.approx(error.mean() + k * error.std(ddof=0), rel=1e-12)
        assert result.noise_mean == pytest.approx(error.mean()) and result.k == k
        assert result.n_pixels == int(region.sum())
        d = (sr - hr)[region]
        assert result.hallucinated_fraction == pytest.approx(np.mean(d > result.tau))
        assert result.lost_fraction == pytest.approx(np.mean(d < -result.tau))
        assert result.mean_abs_difference == pytest.approx(np.abs(d).mean())
    # one more SD raises tau by exactly the SD, and a higher floor can only flag fewer pixels
    assert results[3.0].tau - results[2.0].tau == pytest.approx(error.std())
    for field in ("hallucinated_fraction", "lost_fraction"):
        assert getattr(results[1.0], field) >= getattr(results[2.0], field) >= getattr(results[3.0], field)
    with pytest.raises(ValueError, match="k must be"):
        hallucination_map(sr, hr, ae, k=-1)


def test_a_bright_blob_is_hallucinated_at_exactly_its_pixels(brain):
    hr, ae = brain["hr"][2], brain["ae"][2]
    yy, xx = np.mgrid[: hr.shape[0], : hr.shape[1]]
    blob = (yy - 150) ** 2 + (xx - 90) ** 2 <= 6**2
    assert foreground_mask(hr)[0][blob].all()  # the blob lies in the brain
    sr = hr.copy()
    sr[blob] += 0.3
    result = hallucination_map(sr, hr, ae)
    assert result.tau < 0.3
    assert np.array_equal(result.labels == 1, blob)
    assert not (result.labels == -1).any()
    assert result.hallucinated_fraction == pytest.approx(blob.sum() / result.n_pixels)
    assert set(np.unique(result.labels)) == {0, 1}


def test_a_removed_structure_is_lost(brain):
    hr, ae = brain["hr"][2], brain["ae"][2]
    box = np.zeros(hr.shape, dtype=bool)
    box[100:130, 60:100] = True
    sr = hr.copy()
    sr[box] = 0.0  # structure erased: D = -HR there
    result = hallucination_map(sr, hr, ae)
    expected = box & (hr > result.tau) & result.foreground
    assert expected.sum() > 100
    assert np.array_equal(result.labels == -1, expected)
    assert not (result.labels == 1).any()
    assert result.lost_fraction == pytest.approx(expected.sum() / result.n_pixels)


def test_foreground_options_and_batches(brain):
    hr, ae, sr = brain["hr"], brain["ae"], brain["sr"]
    batch = hallucination_maps(torch.from_numpy(sr[:, None]), hr[:, None], ae)  # torch and numpy mixed
    assert len(batch) == 5
    single = hallucination_map(sr[1], hr[1], ae[1])
    assert batch[1].to_dict() == single.to_dict()
    everywhere = hallucination_map(sr[1], hr[1], ae[1], foreground=None)
    assert everywhere.n_pixels == hr[1].size and everywhere.foreground.all()
    # air dilutes the whole-image fractions
    assert everywhere.hallucinated_fraction < single.hallucinated_fraction
    explicit = hallucination_map(sr[1], hr[1], ae[1], foreground=single.foreground)
    assert explicit.to_dict() == single.to_dict()
    empty = hallucination_map(sr[1], np.zeros_like(hr[1]), ae[1])
    assert empty.n_pixels == 0 and math.isnan(empty.tau) and math.isnan(empty.hallucinated_fraction)
    with pytest.raises(ValueError, match="one image"):
        hallucination_map(sr, hr, ae)
    with pytest.raises(ValueError, match="same shape"):
        hallucination_maps(sr[:2], hr[:3], ae[:3])
    with pytest.raises(ValueError, match="does not fit"):
        hallucination_map(sr[1], hr[1], ae[1], foreground=single.foreground[:100])


def test_hallucination_figure(brain, tmp_path):
    out = tmp_path / "figs" / "hallucination.png"
    sr, hr, ae = brain["sr"][:2], brain["hr"][:2], brain["ae"][:2]
    written = save_hallucination_figure(out, sr, hr, ae, image_ids=["s75", "s76"])
    assert written == out
    _assert_png(out)


# ---------------------------------------------------------------- latent fidelity


@pytest.fixture(scope="module")
def latents() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    hr = torch.randn(3, 4, 16, 16, generator=g) + torch.tensor([0.5, -1.0, 2.0, 0.1])[:, None, None]
    sr = hr + 0.5 * torch.randn(3, 4, 16, 16, generator=g)
    return sr, hr


@pytest.mark.parametrize("size", [1, 2, 4, 16])
@pytest.mark.parametrize("mode", ["channel_maps", "channel_vectors"])
def test_identical_latents_and_a_sign_flip(latents, size, mode):
    _, hr = latents
    same = latent_fidelity(hr, hr.clone(), size, mode)
    assert np.allclose(same.cosine, 1.0) and np.all(same.mse == 0) and np.all(np.isinf(same.psnr))
    flipped = latent_fidelity(-hr, hr, size, mode)
    assert np.allclose(flipped.cosine, -1.0) and np.all(np.isfinite(flipped.psnr))


def test_cosine_and_psnr_against_a_hand_computation(latents):
    sr, hr = (t.numpy().astype(np.float64) for t in latents)
    pooled = {name: a.reshape(3, 4, 4, 4, 4, 4).mean(axis=(3, 5)) for name, a in (("sr", sr), ("hr", hr))}  # 16 -> 4
    maps = latent_fidelity(sr, hr, output_size=4)
    flat_sr, flat_hr = pooled["sr"].reshape(3, 4, -1), pooled["hr"].reshape(3, 4, -1)
    per_channel = (flat_sr * flat_hr).sum(-1) / (np.linalg.norm(flat_sr, axis=-1) * np.linalg.norm(flat_hr, axis=-1))
    np.testing.assert_allclose(maps.channel_cosine, per_channel, rtol=1e-12)
    np.testing.assert_allclose(maps.cosine, per_channel.mean(axis=1), rtol=1e-12)
    vectors = latent_fidelity(sr, hr, output_size=4, mode="channel_vectors")
    reference = F.cosine_similarity(torch.from_numpy(pooled["sr"]), torch.from_numpy(pooled["hr"]), dim=1)
    reference = reference.mean(dim=(1, 2))
    np.testing.assert_allclose(vectors.cosine, reference.numpy(), rtol=1e-12)
    assert vectors.channel_cosine is None
    peak = hr.max(axis=(1, 2, 3)) - hr.min(axis=(1, 2, 3))
    mse = ((pooled["sr"] - pooled["hr"]) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(maps.psnr, 10 * np.log10(peak**2 / mse), rtol=1e-12)
    np.testing.assert_allclose(maps.peak, peak)
    # on a 1x1 grid both modes are the cosine of the vector of channel means
    means_sr, means_hr = sr.mean(axis=(2, 3)), hr.mean(axis=(2, 3))
    expected = (means_sr * means_hr).sum(1) / (np.linalg.norm(means_sr, axis=1) * np.linalg.norm(means_hr, axis=1))
    for mode in ("channel_maps", "channel_vectors"):
        global_scale = latent_fidelity(sr, hr, 1, mode)
        np.testing.assert_allclose(global_scale.cosine, expected, rtol=1e-12)
        assert global_scale.channel_cosine is None and global_scale.output_size == (1, 1)
    assert tuple(pool_latents(hr, 2).shape) == (3, 4, 2, 2)


def test_latent_scales_shapes_and_refusals(latents):
    sr, hr = latents
    scales = latent_fidelity_by_scale(sr, hr)
    assert list(scales) == [16, 8, 4, 2, 1]
    assert all(r.cosine.shape == (3,) and r.psnr.shape == (3,) for r in scales.values())
    assert latent_fidelity(sr[0], hr[0]).cosine.shape == (1,)  # (C, h, w) is one image
    with pytest.raises(ValueError, match="differ in shape"):
        latent_fidelity(sr[:, :3], hr)
    with pytest.raises(ValueError, match="differ in shape"):
        latent_fidelity(sr[:2], hr)
    with pytest.raises(ValueError, match=r"\(B, C, h, w\)"):
        latent_fidelity(sr[0, 0], hr[0, 0])
    with pytest.raises(ValueError, match="output_size"):
        latent_fidelity(sr, hr, output_size=32)
    with pytest.raises(ValueError, match="mode"):
        latent_fidelity(sr, hr, mode="spatial")
    zero = latent_fidelity(torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8), 2)
    assert np.isnan(zero.cosine).all() and np.isnan(zero.psnr).all()  # 0/0 is not a similarity


# ---------------------------------------------------------------- Bland-Altman


def test_bland_altman_known_answer_paired_by_id():
    rng = np.random.default_rng(3)
    ids = [f"case-{i:03d}" for i in range(40)]
    reference = {i: float(v) for i, v in zip(ids, rng.uniform(0.1, 0.4, 40), strict=True)}
    method = {i: reference[i] + float(rng.normal(0.01, 0.02)) for i in reversed(ids)}  # other insertion order
    result = bland_altman(method, reference)
    m = np.array([method[i] for i in ids])
    r = np.array([reference[i] for i in ids])
    d = m - r
    sd = np.sqrt(np.sum((d - d.mean()) ** 2) / (len(d) - 1))
    assert result.n == 40 and result.ids == ids
    assert result.bias == pytest.approx(d.mean(), abs=1e-15)
    assert result.sd_difference == pytest.approx(sd, rel=1e-12)
    assert result.z == pytest.approx(1.959964, abs=1e-6)
    assert result.loa_low == pytest.approx(d.mean() - 1.959964 * sd, abs=1e-8)
    assert result.loa_high == pytest.approx(d.mean() + 1.959964 * sd, abs=1e-8)
    np.testing.assert_allclose(result.means, (m + r) / 2)
    np.testing.assert_allclose(result.differences, d)
    assert result.to_dict()["n"] == 40 and len(result.to_dict(per_image=True)["differences"]) == 40


def test_bland_altman_refuses_unpaired_ids_and_bad_values():
    a = {"a": 1.0, "b": 2.0, "c": 3.0}
    with pytest.raises(ValueError, match="cannot pair results of different images"):
        bland_altman(a, {"a": 1.0, "b": 2.0, "d": 3.0})
    with pytest.raises(ValueError, match="at least 2"):
        bland_altman({"a": 1.0}, {"a": 1.5})
    with pytest.raises(ValueError, match="not finite"):
        bland_altman({**a, "c": math.nan}, a)
    dropped = bland_altman({**a, "c": math.nan}, a, nonfinite="drop")
    assert dropped.n == 2 and dropped.n_dropped == 1


def test_bland_altman_of_mean_intensity_on_real_slices_and_figure(brain, tmp_path):
    hr = {f"s{SLICE - 2 + i}": brain["hr"][i] for i in range(5)}
    sr = {f"s{SLICE - 2 + i}": torch.from_numpy(brain["sr"][i]) for i in range(5)}
    hr_means = mean_intensities(hr)
    assert hr_means["s77"] == pytest.approx(brain["hr"][2].mean())
    result = bland_altman(mean_intensities(sr), hr_means)
    assert result.n == 5 and abs(result.bias) < 0.01  # bicubic preserves the mean intensity closely
    out = save_bland_altman_figure(tmp_path / "ba.png", {"BraTS bicubic": result, "again": result})
    _assert_png(out)


# ---------------------------------------------------------------- tumour ROI


def test_roi_psnr_inside_and_outside_the_tumour_against_numpy(brain):
    hr, sr, mask = brain["hr"][2], brain["sr"][2], brain["mask"][2]
    assert set(np.unique(mask)) == {0, 1} and (mask > 0).sum() > 1000
    rows = {row.region: row for row in region_metrics(sr, hr, mask)}
    assert list(rows) == ["inside", "background"]
    err = (sr - hr) ** 2
    for name, region in (("inside", mask > 0), ("background", mask == 0)):
        assert rows[name].n_pixels == region.sum() and rows[name].reason is None
        assert rows[name].psnr == pytest.approx(10 * np.log10(1.0 / err[region].mean()), rel=1e-12)
    # the SSIM map is averaged over each region: the two regions weighted by size give the image's SSIM
    total = sum(rows[name].ssim * rows[name].n_pixels for name in ("inside", "background")) / hr.size
    assert total == pytest.approx(ssim(sr, hr)[0], abs=1e-6)
    # a mask covering everything reproduces the whole-image metrics
    whole = region_metrics(sr, hr, np.ones_like(mask))[0]
    # torchmetrics scales by 10 / ln(10) held in float32: agreement to ~1e-7 relative, not 1e-12
    assert whole.psnr == pytest.approx(psnr(sr, hr)[0], rel=1e-6)
    assert whole.ssim == pytest.approx(ssim(sr, hr)[0], abs=1e-6)
    exact = region_metrics(hr, hr, mask)[0]
    assert exact.psnr == math.inf and exact.ssim == pytest.approx(1.0)


def test_roi_empty_mask_gives_nan_with_a_reason(brain):
    hr, sr = brain["hr"][2], brain["sr"][2]
    empty = np.zeros(hr.shape, dtype=np.uint8)
    inside, background = region_metrics(sr, hr, empty)
    assert inside.n_pixels == 0 and math.isnan(inside.psnr) and math.isnan(inside.ssim) and inside.reason
    assert background.psnr == pytest.approx(psnr(sr, hr)[0], rel=1e-6) and background.reason is None
    labelled = region_metrics(sr, hr, empty, labels=[1])[0]
    assert math.isnan(labelled.psnr) and "no pixel with label 1" in labelled.reason
    with pytest.raises(ValueError, match="integer labels"):
        region_metrics(sr, hr, empty + 0.5)
    with pytest.raises(ValueError, match="does not fit"):
        region_metrics(sr, hr, empty[:100])


def test_roi_multi_label_mask_gives_one_entry_per_label(brain):
    hr, sr = brain["hr"][1:3], brain["sr"][1:3]
    masks = brain["mask"][1:3].copy()
    masks[0, 30:60, 100:140] = 2  # a second label in the first image only
    rows = region_metrics(sr, hr, masks, image_ids=["s76", "s77"])
    assert [(r.image_id, r.region) for r in rows] == [
        (i, name) for i in ("s76", "s77") for name in ("inside", "label_1", "label_2", "background")
    ]
    by_key = {(r.image_id, r.region): r for r in rows}
    assert by_key["s76", "label_2"].n_pixels == 30 * 40
    assert by_key["s76", "inside"].n_pixels == by_key["s76", "label_1"].n_pixels + 30 * 40
    assert math.isnan(by_key["s77", "label_2"].psnr) and "label 2" in by_key["s77", "label_2"].reason
    err = (sr[0] - hr[0]) ** 2
    assert by_key["s76", "label_2"].psnr == pytest.approx(10 * np.log10(1 / err[masks[0] == 2].mean()))
    assert by_key["s77", "label_1"].to_dict()["labels"] == [1]
    table = scores_by_region(rows, "ssim")
    assert list(table) == ["inside", "label_1", "label_2", "background"]
    assert table["label_1"] == {"s76": by_key["s76", "label_1"].ssim, "s77": by_key["s77", "label_1"].ssim}


# ---------------------------------------------------------------- AE ceiling regression

# the paper's own points: AE ceilings (Table S11) and SR PSNRs (Table 2), (VAE, dataset)
PAPER_CEILING = {
    ("MedVAE", "MRNet"): 27.85, ("SD-VAE", "MRNet"): 23.92,
    ("MedVAE", "BraTS"): 37.87, ("SD-VAE", "BraTS"): 31.39,
    ("MedVAE", "CXR"): 36.93, ("SD-VAE", "CXR"): 32.02,
}  # fmt: skip
PAPER_SR = {
    ("SD-VAE", "CXR"): 25.58, ("MedVAE", "CXR"): 28.87,
    ("SD-VAE", "BraTS"): 23.51, ("MedVAE", "BraTS"): 26.42,
    ("SD-VAE", "MRNet"): 22.34, ("MedVAE", "MRNet"): 25.26,
}  # fmt: skip


def test_regression_known_answer_against_scipy():
    rng = np.random.default_rng(7)
    x = rng.uniform(20, 40, 9)
    y = 0.6 * x + 5 + rng.normal(0, 1.0, 9)
    keys = [f"point{i}" for i in range(9)]
    result = ceiling_regression(dict(zip(keys, x, strict=True)), dict(zip(reversed(keys), y[::-1], strict=True)))
    fit = stats.linregress(x, y)
    r, p = stats.pearsonr(x, y)
    assert result.n == 9 and result.labels == keys
    assert result.pearson_r == pytest.approx(r) and result.r_squared == pytest.approx(r**2)
    assert result.p_value == pytest.approx(p) and result.p_value == pytest.approx(fit.pvalue)
    assert result.slope == pytest.approx(fit.slope) and result.intercept == pytest.approx(fit.intercept)
    assert result.slope_stderr == pytest.approx(fit.stderr)
    # the band of the fitted mean at mean(x) is t * s / sqrt(n)
    s = np.sqrt(np.sum((y - result.predict(x)) ** 2) / 7)
    low, high = result.confidence_band([x.mean()])
    assert (high - low)[0] / 2 == pytest.approx(stats.t.ppf(0.975, 7) * s / 3)


def test_regression_on_the_papers_points_states_a_weak_p_value(tmp_path):
    result = ceiling_regression(PAPER_CEILING, PAPER_SR)
    assert result.n == 6
    assert result.pearson_r == pytest.approx(0.816, abs=1e-3) and result.r_squared == pytest.approx(0.665, abs=1e-3)
    assert 0.04 < result.p_value < 0.05  # not "p < 0.001": six points, four degrees of freedom
    assert result.labels[0] == "MedVAE / BraTS"
    out = save_ceiling_regression_figure(tmp_path / "ceiling.png", result)
    _assert_png(out)


def test_regression_refusals():
    with pytest.raises(ValueError, match="at least 3"):
        ceiling_regression({"a": 30.0, "b": 35.0}, {"a": 25.0, "b": 27.0})
    with pytest.raises(ValueError, match="cannot pair"):
        ceiling_regression({"a": 30.0, "b": 35.0, "c": 33.0}, {"a": 25.0, "b": 27.0, "d": 26.0})
    with pytest.raises(ValueError, match="equal"):
        ceiling_regression({"a": 30.0, "b": 30.0, "c": 30.0}, {"a": 25.0, "b": 27.0, "c": 26.0})
    with pytest.raises(ValueError, match="finite"):
        ceiling_regression({"a": 30.0, "b": math.inf, "c": 33.0}, {"a": 25.0, "b": 27.0, "c": 26.0})
