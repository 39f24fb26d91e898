"""The bundle's ``evaluate`` entry: a tiny SR model, its AE ceiling, bicubic and Lanczos scored on real
BraTS test slices against the true HR, run in-process; the run folder, pairing, an independent PSNR,
tables regenerated from the CSV, refusals; the Lanczos baseline and the tables on synthetic rows."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

from conftest import REPO_ROOT
from LatentSRLib.autoencoders import load_autoencoder
from LatentSRLib.autoencoders.latent_stats import LatentStats
from LatentSRLib.autoencoders.monai_kl import save_monai_autoencoder
from LatentSRLib.diffusion import DDPMObjective, build_denoiser
from LatentSRLib.errors import InputError, OutputError
from LatentSRLib.evaluation.evaluate import evaluate
from LatentSRLib.evaluation.methods import BicubicBaseline, LanczosBaseline, MethodBatch
from LatentSRLib.evaluation.rows import read_rows
from LatentSRLib.evaluation.tables import tables_from_rows
from LatentSRLib.data.slice_source import SliceSelection
from LatentSRLib.model.folder import save_sr_model
from LatentSRLib.transforms.tasks import parse_task
from LatentSRLib.training.autoencoder import autoencoder_config, build_autoencoder
from LatentSRLib.data.dataset import PreparedDataset, SplitRule, prepare_dataset
from LatentSRLib.autoencoders import weights_fingerprint

CONFIGS = REPO_ROOT / "Training" / "configs"
GRID = 64
LIMIT = 6
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def save_tiny_model(root, task="sr4"):
    """An untrained tiny model on a 64x64 grid in a tiny MONAI autoencoder's latent space (the
    evaluation's plumbing and statistics do not need a trained one)."""
    torch.manual_seed(0)
    config = autoencoder_config(downsampling=4, latent_channels=2, width=8)
    if not (root / "vae").exists():
        save_monai_autoencoder(build_autoencoder(config), root / "vae", config)
    autoencoder = load_autoencoder(f"monai:{root / 'vae'}", latent_stats=None)
    latent_stats = LatentStats.estimate(autoencoder, [np.random.default_rng(0).random((4, GRID, GRID), dtype=np.float32)])
    denoiser = build_denoiser("tiny", 2)
    with torch.no_grad():  # MONAI zero-initialises the output layer: give the untrained net an output
        for parameter in denoiser.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    folder = root / f"model-{task}"
    save_sr_model(folder, denoiser, objective=DDPMObjective().to_dict(),
                  autoencoder={"spec": f"monai:{root / 'vae'}", "name": "vae",
                               "weights_sha256": weights_fingerprint(autoencoder), "latent_channels": 2,
                               "downsampling_factor": 4},
                  latent_stats=latent_stats, task=parse_task(task).to_dict(),
                  grid={"size": [GRID, GRID], "fit": "pad", "lower_percentile": 0.5, "upper_percentile": 99.5},
                  sampling={"sampler": "ddim", "steps": 2})
    return folder


def run_evaluate(dataset_dir, methods, output_dir, **overrides):
    from monai.bundle import run

    settings = {"split": "test", "limit": LIMIT, "steps": 2, "n_resamples": 200, "batch_size": 4, "device": "cpu",
                "lpips_download": False, "fid_download": False, **overrides}
    run("evaluate", meta_file=str(CONFIGS / "metadata.json"), config_file=str(CONFIGS / "evaluate.yaml"),
        logging_file=str(CONFIGS / "logging.conf"), dataset_dir=str(dataset_dir), methods=methods,
        output_dir=str(output_dir), **settings)


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory, brats_flair, brats_t1):
    root = tmp_path_factory.mktemp("evaluate")
    dataset = prepare_dataset([brats_t1, brats_flair], root / "dataset", parse_task("sr4"),
                              selection=SliceSelection(size=(GRID, GRID), every=12),
                              split_rule=SplitRule(val_fraction=0, test_fraction=0, test_subjects=("*t2f",)),
                              progress=False)
    model = save_tiny_model(root)
    methods = [f"model:{model}", f"ae:monai:{root / 'vae'}", "bicubic", "lanczos"]
    run_evaluate(dataset.folder, methods, root / "run", samples=2)
    return {"root": root, "dataset": dataset.folder, "model": model, "methods": methods, "run": root / "run"}


@pytest.mark.slow
@pytest.mark.shared_data
def test_run_folder_holds_every_file(evaluation):
    run = evaluation["run"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["format"] == "latentsr.evaluation"
    for name in ("per_image.csv", "summary.json", "tables.md", "report.md", "radial_spectrum.csv", "examples.npz"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    assert set(summary["files"]) == {p.name for p in run.iterdir()}
    figures = summary["figures"]
    model = evaluation["methods"][0]
    for key in ("perception_distortion", "metric_bars", "subband_profile", "radial_spectrum", "examples",
                f"hallucination:{model}", "bland_altman"):
        data = (run / figures[key]).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000, key
    # one SR model cannot make a regression: skipped with a note, not faked
    assert "ceiling_regression" not in figures
    assert any("regression" in note and "at least 3" in note for note in summary["notes"])
    # the explicit ae: method is recognised as the model's own autoencoder: no second ceiling
    assert [m["name"] for m in summary["methods"]] == evaluation["methods"]
    assert summary["methods"][0]["noise_floor"] == evaluation["methods"][1]
    assert summary["settings"]["samples"] == 2 and summary["methods"][0]["steps"] == 2
    report = (run / "report.md").read_text()
    lpips = summary["lpips"]
    assert lpips["label"] and lpips["label"] in report and "AlexNet" in lpips["label"]
    if lpips["column"] == "stlpips_alex":
        assert "offline stand-in" in lpips["label"]
    fid = summary["fid"]
    assert fid["label"] and fid["label"] in report and fid["label"] in (run / "tables.md").read_text()
    if fid["name"] == "fd_st_alexnet":
        assert "ST-LPIPS AlexNet" in fid["label"] and "not comparable with Inception FID" in fid["label"]
    values = fid["values"][evaluation["dataset"].name]
    assert list(values) == evaluation["methods"]  # one value per method, the AE ceiling included
    assert all(v["n"] == v["n_true"] == LIMIT and v["value"] >= 0 for v in values.values())
    assert summary["tables"]["fid"] == fid  # what tables_from_rows needs to redraw Table S12
    assert any("FID" in note and "2048" in note for note in summary["notes"])  # 6 slices: biased, said so
    assert "2048" in report.split("## Notes")[1]
    for name in figures.values():
        assert f"]({name})" in report


@pytest.mark.slow
@pytest.mark.shared_data
def test_rows_are_paired_and_scored_against_the_true_image(evaluation):
    rows = read_rows(evaluation["run"] / "per_image.csv")
    methods = evaluation["methods"]
    ids = {m: [r["id"] for r in rows if r["method"] == m] for m in methods}
    assert len(ids[methods[0]]) == LIMIT
    assert all(sorted(v) == sorted(ids[methods[0]]) for v in ids.values())
    lpips = [c for c in rows[0] if "lpips" in c]
    assert len(lpips) == 1 and lpips[0] in ("lpips_alex", "stlpips_alex")

    dataset = PreparedDataset(evaluation["dataset"])
    row_of = {r["id"]: r["row"] for r in dataset.rows}
    for r in (r for r in rows if r["method"] == "bicubic"):
        hr = np.asarray(dataset.hr[row_of[r["id"]]], dtype=np.float64)
        lr = np.asarray(dataset.lr[row_of[r["id"]]], dtype=np.float64)
        assert r["psnr"] == pytest.approx(10 * math.log10(1.0 / np.mean((lr - hr) ** 2)), rel=1e-6)
        assert r["hr_mean_intensity"] == pytest.approx(hr.mean(), rel=1e-6)
        assert math.isnan(r["hallucinated_fraction"]) and math.isnan(r["latent_cosine"])
        assert math.isnan(r["ms_ssim"])  # 64x64 is below MS-SSIM's 176 px
    for r in rows:
        if r["kind"] in ("sr_model", "ae_ceiling"):
            assert 0 <= r["hallucinated_fraction"] <= 1 and r["noise_floor"] == methods[1]
        assert math.isfinite(r["latent_cosine"]) == (r["kind"] == "sr_model")
        assert r["seconds_per_sample"] >= 0


@pytest.mark.slow
@pytest.mark.shared_data
def test_tables_are_regenerated_from_the_csv(evaluation):
    run = evaluation["run"]
    summary = json.loads((run / "summary.json").read_text())
    rows = read_rows(run / "per_image.csv")
    tables = tables_from_rows(rows, **summary["tables"])
    assert tables == (run / "tables.md").read_text()
    for heading in ("Table 1", "Table 2", "Table S6", "Table S7", "Table S8", "Table S9", "Table S11", "Table S12"):
        assert f"## {heading}" in tables
    report = (run / "report.md").read_text()
    assert "## Tables" in report and all(f"### Table {t}" in report for t in ("1", "S11", "S12"))
    # an unpaired set (one method lacks an image) is refused
    unpaired = [r for r in rows if not (r["method"] == "lanczos" and r["id"] == rows[0]["id"])]
    with pytest.raises(ValueError, match="not scored on the same images"):
        tables_from_rows(unpaired, **summary["tables"])


@pytest.mark.slow
@pytest.mark.shared_data
def test_refusals(evaluation, tmp_path):
    # a non-empty folder that is not a previous evaluation
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not a previous evaluation"):
        evaluate(evaluation["dataset"], ["bicubic"], foreign, lpips=False, progress=False)
    assert (foreign / "notes.txt").read_text() == "mine"
    # never inside an input
    with pytest.raises(OutputError):
        evaluate(evaluation["dataset"], ["bicubic"], evaluation["dataset"] / "run", lpips=False, progress=False)
    # unpaired inputs: an LR array that does not match the HR array / manifest
    damaged = tmp_path / "damaged"
    shutil.copytree(evaluation["dataset"], damaged, ignore=shutil.ignore_patterns("latents"))
    np.save(damaged / "lr.npy", np.load(damaged / "lr.npy")[:-1])
    with pytest.raises(InputError, match="damaged dataset"):
        evaluate(damaged, ["bicubic"], tmp_path / "out", lpips=False, progress=False)
    # a model trained for another task than the dataset holds
    other = save_tiny_model(evaluation["root"], task="sr2")
    with pytest.raises(InputError, match="task sr2"):
        evaluate(evaluation["dataset"], [f"model:{other}"], tmp_path / "out", lpips=False, progress=False)
    with pytest.raises(InputError, match="unknown method"):
        evaluate(evaluation["dataset"], ["nearest"], tmp_path / "out", lpips=False, progress=False)
    # a previous evaluation is replaced as a whole
    previous = tmp_path / "previous"
    shutil.copytree(evaluation["run"], previous)
    result = evaluate(evaluation["dataset"], ["bicubic", "lanczos"], previous, limit=3, lpips=False,
                      n_resamples=50, progress=False)
    summary = json.loads((previous / "summary.json").read_text())
    assert [m["name"] for m in summary["methods"]] == ["bicubic", "lanczos"] and len(result.rows) == 6
    assert not (previous / "hallucination_1.png").exists()


# ------------------------------------------------------------------------------------- Lanczos
def test_lanczos_baseline_is_area_down_then_pil_lanczos_up():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:GRID, 0:GRID] / GRID
    smooth = 0.5 + 0.3 * np.sin(2 * np.pi * xx) * np.cos(2 * np.pi * yy)
    edge = (xx > 0.5).astype(np.float64)  # Lanczos rings at a step: the output is clipped to [0, 1]
    lr = torch.from_numpy(np.stack([smooth, edge, rng.random((GRID, GRID))]).astype(np.float32))[:, None]
    batch = MethodBatch(ids=["a", "b", "c"], lr=lr, hr=lr.clone())
    out = LanczosBaseline(4).run(batch).predictions
    assert out.shape == lr.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    for i in range(3):
        small = lr[i, 0].numpy().reshape(16, 4, 16, 4).mean(axis=(1, 3))  # area average, independently
        expected = np.asarray(Image.fromarray(small.astype(np.float32)).resize((GRID, GRID), Image.LANCZOS))
        np.testing.assert_allclose(out[i, 0].numpy(), np.clip(expected, 0, 1), atol=1e-5)
    raw = np.asarray(Image.fromarray(lr[1, 0].numpy().reshape(16, 4, 16, 4).mean(axis=(1, 3))).resize(
        (GRID, GRID), Image.LANCZOS))
    assert raw.max() > 1 or raw.min() < 0  # there was overshoot to clip
    np.testing.assert_allclose(out[0, 0].numpy(), smooth, atol=0.03)  # a smooth image survives
    assert torch.equal(LanczosBaseline(1).run(batch).predictions, lr)  # scale 1: the LR itself
    assert torch.equal(BicubicBaseline(parse_task("sr4")).run(batch).predictions, lr)  # bicubic = the stored LR


# ------------------------------------------------------------------------------------- tables on synthetic rows
def synthetic_rows(datasets=("d1",), n=8, shift=0.0):
    rng = np.random.default_rng(1)
    rows = []
    for number, dataset in enumerate(datasets):
        base = rng.normal(28, 2, n)
        means = {"model:m": 2.0 + number, "bicubic": 0.0, "ae:x": 6.0 + 2 * number + shift}
        kinds = {"model:m": "sr_model", "bicubic": "interpolation", "ae:x": "ae_ceiling"}
        floors = {"model:m": "ae:x", "bicubic": "", "ae:x": "ae:x"}
        for method, offset in means.items():
            noise = rng.normal(0, 0.5, n)
            for i in range(n):
                hallucinated = math.nan if kinds[method] == "interpolation" else 0.01 * (i + 1)
                rows.append({"dataset": dataset, "id": f"s{i // 2}/slice-{i}", "subject": f"s{i // 2}",
                             "method": method, "kind": kinds[method], "noise_floor": floors[method],
                             "psnr": base[i] + offset + noise[i], "ssim": 0.8 + 0.01 * noise[i], "ms_ssim": math.nan,
                             "stlpips_alex": 0.2 - 0.01 * offset + 0.01 * noise[i],
                             **{f"psnr_{b}": 30.0 + noise[i] for b in ("LL3", "LH3", "HL3", "HH3", "LH2", "HL2",
                                                                      "HH2", "LH1", "HL1", "HH1")},
                             "hallucinated_fraction": hallucinated, "lost_fraction": hallucinated,
                             "noise_floor_tau": 0.05, "latent_cosine": 0.9 if method == "model:m" else math.nan,
                             "latent_psnr": 20.0 if method == "model:m" else math.nan,
                             "latent_cosine_1x1": math.nan, "latent_psnr_1x1": math.nan,
                             "mean_intensity": 0.3 + 0.001 * noise[i], "hr_mean_intensity": 0.3,
                             "seconds_per_sample": 0.1})
    return rows


def _line(tables: str, *cells: str) -> str:
    return next(line for line in tables.splitlines() if all(c in line for c in cells))


def test_tables_from_rows_on_synthetic_rows():
    rows = synthetic_rows()
    tables = tables_from_rows(rows, lpips_label="ST-LPIPS (offline stand-in)", n_resamples=500, holm=True)
    psnr = {m: np.array([r["psnr"] for r in rows if r["method"] == m]) for m in ("model:m", "bicubic", "ae:x")}
    line = _line(tables, "| d1 | `bicubic` | interpolation | 8 |")
    assert f"{psnr['bicubic'].mean():.2f} ± {psnr['bicubic'].std(ddof=1):.2f}" in line
    assert "| n/a |" in line  # MS-SSIM undefined: shown, not invented
    # Table 2: reference (the first SR model) - method, paired, with Wilcoxon p and Holm
    line = _line(tables, "| d1 | PSNR (dB) | `model:m` | `bicubic` |")
    difference = psnr["model:m"] - psnr["bicubic"]
    assert f"| {difference.mean():+.2f} |" in line
    p = stats.wilcoxon(psnr["model:m"], psnr["bicubic"]).pvalue
    assert (f"| {p:.2g} |" if p >= 1e-3 else f"| {p:.1e} |") in line
    assert f"| {difference.mean() / difference.std(ddof=1):.2f} |" in line
    assert "Holm p" in tables and "ST-LPIPS (offline stand-in)" in tables
    # S7 lists methods with a noise floor only; S11 the AE ceiling
    s7 = tables.split("## Table S7")[1].split("## Table S8")[0]
    assert "`model:m`" in s7 and "`ae:x` §" in s7 and "`bicubic`" not in s7
    assert "`ae:x`" in tables.split("## Table S11")[1]
    assert "Regression not fitted" in tables
    # subject level: n counts subjects
    by_subject = tables_from_rows(rows, aggregate="subject", n_resamples=200)
    assert "| d1 | `bicubic` | interpolation | 4 |" in by_subject and "n counts subjects" in by_subject
    # three datasets: three (model x dataset) points, a fitted regression
    three = tables_from_rows(synthetic_rows(("d1", "d2", "d3")), n_resamples=100)
    assert "OLS: SR PSNR" in three and "n = 3 points" in three
    # rows that do not pair are refused
    with pytest.raises(ValueError, match="not scored on the same images"):
        tables_from_rows(rows[1:])
    with pytest.raises(ValueError, match="given twice"):
        tables_from_rows(rows + rows[:1])


def test_fid_table_from_saved_values():
    rows = synthetic_rows(("d1", "d2"))
    label = "FD (offline ST-LPIPS AlexNet features; not comparable with Inception FID)"
    values = {"d1": {"model:m": {"value": 0.0123456, "n": 8, "n_true": 8},
                     "bicubic": {"value": 0.5, "n": 8, "n_true": 8},
                     "ae:x": {"value": float("nan"), "n": 1, "n_true": 8}},
              "d2": {"model:m": {"value": 1.5, "n": 4096, "n_true": 4096}}}
    fid = {"name": "fd_st_alexnet", "label": label, "reason": "no torch-fidelity", "min_samples": 2048,
           "values": values}
    tables = tables_from_rows(rows, n_resamples=50, fid=fid)
    s12 = tables.split("## Table S12")[1].split("## Runtime")[0]
    assert label in s12 and "| fd_st_alexnet ↓ |" in s12 and label in tables.split("## Table 1")[0]
    assert "| d1 | `model:m` | sr_model | 8 | 8 | 0.01235 | ⚠ n < 2048 |" in s12
    assert "| d1 | `ae:x` § | ae_ceiling | 1 | 8 | n/a | ⚠ n < 2048 |" in s12  # too few images: no value
    assert "| d2 | `model:m` | sr_model | 4096 | 4096 | 1.5 |  |" in s12  # enough images: no flag
    assert "| d2 | `bicubic` | interpolation | n/a | n/a | n/a |  |" in s12  # not saved: not invented
    assert "biased upwards at small n" in s12
    # no FID: the table says why instead of showing numbers
    off = tables_from_rows(rows, n_resamples=50, fid={"name": None, "label": None, "reason": "switched off"})
    assert "FID: not computed (switched off)." in off.split("## Table S12")[1]
    assert "FID: not computed" in tables_from_rows(rows, n_resamples=50)
