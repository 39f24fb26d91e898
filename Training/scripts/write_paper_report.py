"""Write the paper-claims report (docs/paper-claims.md) from saved per-image results (rule 9: no typed numbers).

    python Training/scripts/write_paper_report.py --evaluation runs/paper/eval \\
        --generic model:runs/paper/sr-taef2-generic/model --adapted model:runs/paper/sr-taef2-brain/model
    python Training/scripts/write_paper_report.py      # regenerate from docs/results/paper-claims

``--evaluation`` first copies an evaluation run's ``per_image.csv``, ``summary.json`` and its
regression and subband figures into ``docs/results/paper-claims/`` (with ``claims.json``: which two
models are compared), so the report can be regenerated from the repository alone. The report is then
computed by :func:`LatentSRLib.evaluation.claims.latent_space_claims` from those rows.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from LatentSRLib.evaluation.claims import claims_markdown, latent_space_claims
from LatentSRLib.evaluation.rows import read_rows
from LatentSRLib.io.atomic import atomic_path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "results" / "paper-claims"
REPORT = ROOT / "docs" / "paper-claims.md"
FIGURES = {"ceiling_regression.png": "SR PSNR against the AE ceiling, one point per SR model (Claim 6)",
           "subband_profile.png": "Haar subband PSNR per method, coarsest to finest (Claim 4)"}


def store(evaluation: Path, generic: str, adapted: str, results: Path, note: str | None = None) -> None:
    """Copy what the report needs from an evaluation run into ``results`` (replaced whole); ``note``
    (e.g. how the pair was trained) is kept in ``claims.json`` and printed at the top of the report."""
    results.mkdir(parents=True, exist_ok=True)
    for name in ("per_image.csv", "summary.json", "tables.md", *FIGURES):
        if (evaluation / name).is_file():
            shutil.copy2(evaluation / name, results / name)
    chosen = {"generic": generic, "adapted": adapted, "evaluation": str(evaluation)}
    if note:
        chosen["note"] = note
    (results / "claims.json").write_text(json.dumps(chosen, indent=2) + "\n")


def report_text(results: Path, report: Path) -> tuple[str, dict]:
    """The report's Markdown and its numbers, computed from the rows saved in ``results``."""
    chosen = json.loads((results / "claims.json").read_text())
    summary = json.loads((results / "summary.json").read_text())
    claims = latent_space_claims(read_rows(results / "per_image.csv"), chosen["generic"], chosen["adapted"],
                                 n_resamples=summary.get("tables", {}).get("n_resamples", 10_000),
                                 seed=summary.get("tables", {}).get("seed", 0))
    figures = {caption: str((results / name).relative_to(report.parent))
               for name, caption in FIGURES.items() if (results / name).is_file()}
    source = f"`{results.relative_to(ROOT)}`" if results.is_relative_to(ROOT) else str(results)
    text = claims_markdown(claims, summary, source=source, figures=figures)
    for key, label in (("note", "Note"), ("caveat", "Caveat")):  # recorded beside the rows: how they were made, known problems
        if chosen.get(key):
            head, _, rest = text.partition("\n\n")
            text = f"{head}\n\n> **{label}.** {chosen[key]}\n\n{rest}"
    return text, claims


def write_report(results: Path, report: Path) -> Path:
    text, claims = report_text(results, report)
    with atomic_path(results / "claims_numbers.json") as tmp:
        tmp.write_text(json.dumps(claims, indent=2) + "\n")
    with atomic_path(report) as tmp:
        tmp.write_text(text)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--evaluation", type=Path, help="an evaluation run folder to store the results of first")
    parser.add_argument("--generic", help="the SR model in the generic autoencoder's space (its method name)")
    parser.add_argument("--adapted", help="the SR model in the adapted autoencoder's space (its method name)")
    parser.add_argument("--note", help="with --evaluation: a line on how the pair was trained, shown at the top of the report")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("-o", "--output", type=Path, default=REPORT)
    args = parser.parse_args(argv)
    if args.evaluation is not None:
        if not (args.generic and args.adapted):
            parser.error("--evaluation needs --generic and --adapted")
        store(args.evaluation, args.generic, args.adapted, args.results, note=args.note)
    print(f"wrote {write_report(args.results.resolve(), args.output.resolve())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
