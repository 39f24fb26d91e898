"""An evaluation's ``report.md``: settings, networks and methods from the run's summary, the tables
and every figure with its caption, in one Markdown document."""

from __future__ import annotations

__all__ = ["report_markdown"]

_FIGURE_CAPTIONS = {
    "perception_distortion": "Perception-distortion: LPIPS against PSNR per method (mean ± SD).",
    "metric_bars": "Mean PSNR / SSIM / MS-SSIM / LPIPS per method with 95% bootstrap CIs of the mean.",
    "subband_profile": "Mean PSNR per Haar subband, coarsest (LL3) to finest (HH1).",
    "radial_spectrum": "Mean radial power spectrum of each method against the true image (black).",
    "examples": "Example slices: true HR and each output (top), LR input and signed error method − HR (bottom).",
    "bland_altman": "Bland-Altman agreement of the mean intensity with the true image, per method.",
    "ceiling_regression": "AE ceiling PSNR against SR PSNR, one point per SR model x dataset, OLS with 95% band.",
}


def report_markdown(summary: dict, tables: str) -> str:
    """``report.md``: the run's ``summary.json`` content (settings, networks, methods), ``tables`` nested one
    heading level down, every figure with its caption, and the notes."""
    s = summary["settings"]
    d = summary["dataset"]
    lpips = summary["lpips"]
    if lpips["label"]:
        network = f"{lpips['label']} (column `{lpips['column']}`)"
        if lpips.get("reason"):
            network += f"; the preferred network was not used: {lpips['reason']}"
    else:
        network = f"not computed ({lpips['reason']})"
    fid = summary["fid"]
    if fid["label"]:
        fid_network = (f"{fid['label']} (`{fid['name']}`), one value per method over the whole split against the "
                       "true slices (Table S12)")
        if fid.get("reason"):
            fid_network += f"; the preferred network was not used: {fid['reason']}"
    else:
        fid_network = f"not computed ({fid['reason']})"
    lines = [
        "# Evaluation report",
        "",
        f"Dataset `{d['folder']}`, split **{d['split']}**: {d['n_images']} slices of {d['n_subjects']} subject(s), "
        f"{d['size'][0]}x{d['size'][1]}, task {d['task']['name']} (LR input on the HR grid). Every method is scored "
        f"against the true high-resolution slice; rows are paired by image id.",
        "",
        "## Settings",
        "",
        f"- statistics per {s['aggregate']}; reference method for paired comparisons: `{s['reference']}`",
        f"- bootstrap: {s['n_resamples']} resamples, seed {s['seed']}; Holm correction: {'yes' if s['holm'] else 'no'}",
        f"- SR sampling: steps {s['steps'] or 'as recorded in each model'}, sampler {s['sampler'] or 'as recorded'}, "
        f"{s['samples']} sample(s) per image (averaged), seed {s['seed']}",
        f"- hallucination: noise floor mean + {s['k']:g} SD of |AE − HR| over the {s['hallucination_region']}",
        f"- device {s['device']}, batch size {s['batch_size']}, limit {s['limit'] or 'none'}; "
        f"run time {summary['seconds']:.1f} s",
        "",
        "## Networks",
        "",
        f"- LPIPS: {network}",
        f"- FID: {fid_network}",
        "",
        "## Methods",
        "",
        "| method | kind | noise floor | what it is |",
        "| --- | --- | --- | --- |",
    ]
    for m in summary["methods"]:
        floor = f"`{m['noise_floor']}`" if m["noise_floor"] else "none"
        lines.append(f"| `{m['name']}` | {m['kind']} | {floor} | {m['description']} |")
    nested = tables.replace("\n### ", "\n#### ").replace("\n## ", "\n### ").replace("# Tables", "## Tables", 1)
    lines += ["", nested.rstrip(), "", "## Figures", ""]
    for key, name in summary["figures"].items():
        if key.startswith("hallucination:"):
            caption = f"Hallucination maps of `{key.split(':', 1)[1]}` (noise floor of its own autoencoder)."
        else:
            caption = _FIGURE_CAPTIONS.get(key, key)
        lines += [f"![{key}]({name})", "", caption, ""]
    if summary["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in summary["notes"]] + [""]
    return "\n".join(lines)
