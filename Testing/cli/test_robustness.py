"""Every bad input is refused in one line; nothing is half-written; no input is ever touched.

The corpus (``bad_inputs.py``) is run through the ``latentsr`` commands in-process, one test per
command. For each case: exit status 2 and exactly one stderr line that names the culprit
(refusals), or exit 0 and the output written (awkward but valid inputs); never an exception
escaping ``main`` (a traceback); every input byte-identical afterwards; nothing new in the output
area but the case's own outputs (no staging folders, no temp files, no empty folders).
"""

from __future__ import annotations

import hashlib
import traceback
from pathlib import Path

import pytest

from bad_inputs import REFUSE, Case, build_corpus
from conftest import make_tiny_sr_model
from LatentSRLib.cli import main

COMMANDS = ("info", "degrade", "sr", "prepare", "package", "screen", "demo", "calibrate")


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(folder.rglob("*"))}


def _entries(folder: Path) -> set[str]:
    return {str(p) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[Case]]:
    root = tmp_path_factory.mktemp("robustness")
    model = make_tiny_sr_model(root / "trained")
    return root / "corpus", build_corpus(root / "corpus", model, root / "trained" / "vae")


def screen_lines(text: str) -> list[str]:
    """The non-empty lines a terminal shows for ``text``: carriage returns overwrite from column 0
    (progress bars), so a bar erased with spaces leaves nothing."""
    shown = []
    for line in text.split("\n"):
        screen = ""
        for segment in line.split("\r"):
            screen = segment + screen[len(segment):]
        if screen.strip():
            shown.append(screen.strip())
    return shown


def run_case(case: Case, root: Path, capfd) -> list[str]:
    """Run one case; return what went wrong (empty: the case behaved)."""
    inputs_before, out_before = _digest(root / "inputs"), _entries(root / "out")
    problems = []
    capfd.readouterr()
    try:
        code = main(list(case.argv))
    except SystemExit as exc:  # argparse
        code = exc.code
    except BaseException:  # noqa: BLE001 - a traceback is exactly what this test is looking for
        code = None
        problems.append("traceback: " + traceback.format_exc().strip().splitlines()[-1])
    out, err = capfd.readouterr()  # file-descriptor level: what ITK or numpy print in C lands here too
    lines = screen_lines(err)
    if case.expect == REFUSE:
        if code != 2:
            problems.append(f"exit status {code}, not 2")
        if len(lines) != 1:
            problems.append(f"{len(lines)} stderr lines: {lines[:4]}")
        elif case.culprit not in lines[0]:
            problems.append(f"the message does not name {case.culprit!r}: {lines[0]}")
        leftovers = _entries(root / "out") - out_before
    else:
        if code != 0:
            problems.append(f"exit status {code}, not 0: {lines[-3:]}")
        if case.outputs and not Path(case.outputs[0]).exists():
            problems.append(f"{case.outputs[0]} was not written")
        if case.says and case.says not in out + err:
            problems.append(f"the output does not say {case.says!r}")
        made = {str(Path(o)) for o in case.outputs}
        leftovers = {p for p in _entries(root / "out") - out_before
                     if not any(p == m or p.startswith(m + "/") for m in made)}
    if leftovers:
        problems.append(f"left behind: {sorted(leftovers)[:3]}")
    if _digest(root / "inputs") != inputs_before:
        problems.append("an input was modified")
    return problems


@pytest.mark.parametrize("command", COMMANDS)
def test_every_bad_input_is_refused_in_one_line_and_nothing_is_left(corpus, command, capfd):
    root, cases = corpus
    mine = [case for case in cases if case.argv[0] == command]
    assert mine, f"the corpus has no case for {command}"
    failures = {case.name: problems for case in mine if (problems := run_case(case, root, capfd))}
    assert not failures, "\n".join(f"{name}: {'; '.join(p)}" for name, p in failures.items())


def test_the_corpus_is_large_and_varied(corpus):
    _, cases = corpus
    inputs = {case.name.rsplit("-", 1)[0] for case in cases}
    assert len(cases) >= 100 and len(inputs) >= 40


def test_a_refusal_comes_before_torch_is_imported(tmp_path):
    """A typo is answered at once: the checks of files, model folder and output run before the
    heavy imports (torch, MONAI), so `latentsr sr` on a missing file does not load them."""
    import subprocess
    import sys

    code = ("import sys; from LatentSRLib.cli import main\n"
            f"status = [main(argv) for argv in (['sr', 'missing.nii.gz', '-o', {str(tmp_path / 'o')!r}, '--model', 'm'],"
            f" ['degrade', 'missing.nii.gz', '-o', {str(tmp_path / 'x.nii.gz')!r}],"
            f" ['prepare', 'missing.nii.gz', '-o', {str(tmp_path / 'd')!r}, '--task', 'sr4'],"
            f" ['package', 'missing-model', '-o', {str(tmp_path / 'p')!r}], ['info', 'missing.nii.gz'])]\n"
            "print(status, 'torch' in sys.modules, 'monai' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.stdout.split() == ["[2,", "2,", "2,", "2,", "2]", "False", "False"], done.stdout + done.stderr
    assert done.stderr.count("no such") == 5
