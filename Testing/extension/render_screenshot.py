"""Render the module's compare view of a real case, headless, to a PNG (the README's screenshots).

    .venv/bin/python Testing/extension/render_screenshot.py --model MODEL_FOLDER \
        --volume ../shared/data/brain/BraTS-GLI-00001-000-t2f.nii.gz \
        --mask ../shared/data/brain/BraTS-GLI-00001-000-wt-approx.nii.gz \
        -o Resources/Screenshots/LatentSR-compare.png

Runs the module's Logic exactly as the Apply button does (simulate low resolution, the model,
the maps, the metrics table), shows the comparison, renders the Red (simulated LR) and Yellow (SR with
the chosen overlay and the hallucination label map) slice views through vtkMRMLSliceLogic, and
lays them out side by side above the metrics table. ``--overlay interval,trust`` renders one SR panel
per overlay (a calibrated model's interval and trust mask; ``--tolerance`` sets the trust tolerance);
``--slices N`` keeps the N slices around the tumour (a quick run on the CPU).

LatentSR-trust.png (the README's second screenshot) was made on 2 CPU cores with the shipped
brain-sr4, calibrated on the validation subject (its card has the calibration command), from the
repository root, in 40 s:

    .venv/bin/python Testing/extension/render_screenshot.py --model Training/models/brain-sr4 \
        --volume ../shared/data/brain/BraTS-GLI-00001-000-t2f.nii.gz \
        --mask ../shared/data/brain/BraTS-GLI-00001-000-wt-approx.nii.gz --slices 3 --samples 2 \
        --data-consistency --overlay interval,trust --tolerance 420 --hide-hallucination \
        -o Resources/Screenshots/LatentSR-trust.png

(the render prints the interval's percentiles, 401 / 408 / 465 at 5 / 50 / 95%, from which the
tolerance 420 was chosen: above the floor, so the mask marks where the interval widens.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import headless  # noqa: E402  (installs the shim; needs the paths above)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--volume", required=True)
    parser.add_argument("--mask")
    parser.add_argument("--steps", type=int, default=0)
    parser.add_argument("--overlay", default="difference",
                        help="the overlay of the SR panel; several, comma-separated: one SR panel each")
    parser.add_argument("--samples", type=int, default=1, help="samples per slice (a calibrated model: its K)")
    parser.add_argument("--tolerance", default="", help="the trust tolerance (intensity units; calibrated models)")
    parser.add_argument("--slices", type=int, default=0, help="keep only this many slices around the tumour (0: all)")
    parser.add_argument("--hide-hallucination", action="store_true", help="no hallucination label map on the SR panels")
    parser.add_argument("--size", type=int, default=420, help="pixels per view")
    parser.add_argument("--data-consistency", action="store_true", help="the module's data-consistency option")
    parser.add_argument("--model-resolution", action="store_true",
                        help="first put the volume (and mask) at the model grid's resolution, as `latentsr demo` does")
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args(argv)

    from PIL import Image, ImageDraw

    from LatentSRLib.io import atomic_path, read_image
    from LatentSRLogic import LatentSRLogic, calibrationStatus

    scene = headless.make_scene()
    slicer = headless.slicer
    logic = LatentSRLogic()
    import json

    from LatentSRLib.demo.run import at_model_resolution

    grid = max(json.loads((Path(args.model) / "config.json").read_text())["grid"]["size"])
    prepare = (lambda image: at_model_resolution(image, "axial", grid)) if args.model_resolution else (lambda image: image)
    image = prepare(read_image(args.volume))
    mask = None
    tumour_slice = image.array.shape[0] // 2
    if args.mask:
        mask = prepare(read_image(args.mask).with_array((read_image(args.mask).array > 0).astype(np.float32)))
        mask = mask.with_array((mask.array > 0.5).astype(np.uint8))
        tumour_slice = int(np.argmax((mask.array > 0).reshape(mask.array.shape[0], -1).sum(1)))
    if args.slices:  # the slices around the tumour (array axis 0: the axial slices of an axis-aligned scan)
        start = max(0, min(tumour_slice - args.slices // 2, image.array.shape[0] - args.slices))
        image, mask = (None if part is None else crop_slices(part, start, args.slices) for part in (image, mask))
        tumour_slice -= start
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", Path(args.volume).name.split(".")[0])
    LatentSRLogic.updateVolumeNodeFromImage(volume, image)
    parameters = logic.getParameterNode()
    parameters.SetNodeReferenceID("InputVolume", volume.GetID())
    if mask is not None:
        labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "mask")
        LatentSRLogic.updateVolumeNodeFromImage(labels, mask)
        parameters.SetNodeReferenceID("Segmentation", labels.GetID())
    parameters.SetParameter("ModelPath", args.model)
    parameters.SetParameter("Simulate", "true")
    parameters.SetParameter("Steps", str(args.steps))
    parameters.SetParameter("DataConsistency", "true" if args.data_consistency else "false")
    parameters.SetParameter("Device", "auto")
    parameters.SetParameter("Samples", str(args.samples))
    parameters.SetParameter("TrustTolerance", args.tolerance)
    parameters.SetParameter("ShowHallucination", "false" if args.hide_hallucination else "true")
    parameters.SetParameter("OverlayOpacity", "0.45")
    overlays = [overlay for overlay in args.overlay.split(",") if overlay]
    logic.process(parameters, progress=lambda fraction, message: print(f"\r{message}", end="", flush=True))
    print()
    interval = parameters.GetNodeReference("OutputInterval")
    if interval is not None:  # to choose a trust tolerance
        half = slicer.util.arrayFromVolume(interval)
        print("interval half-width percentiles 5/25/50/75/95: "
              + " / ".join(f"{v:.4g}" for v in np.percentile(half, [5, 25, 50, 75, 95])))
    missing = [overlay for overlay in overlays if overlay not in logic.overlayChoices(parameters)]
    if missing:
        raise SystemExit(f"overlay {', '.join(missing)} not available for this run: {logic.calibrationNote(parameters)}")

    from vtk.util.numpy_support import vtk_to_numpy

    ras = LatentSRLogic.ijkToRas(volume) @ np.array([0, 0, tumour_slice, 1.0])

    def panel(name):
        view = scene.views[name]
        view.GetSliceNode().SetDimensions(args.size, args.size, 1)
        view.FitSliceToAll()
        view.SetSliceOffset(float(ras[2]))
        producer = view.GetImageDataConnection().GetProducer()
        producer.Update()
        image = producer.GetOutputDataObject(0)
        width, height, _ = image.GetDimensions()
        pixels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)[::-1, :, :3]
        return Image.fromarray(np.ascontiguousarray(pixels))

    panels, titles = [], []
    for number, overlay in enumerate(overlays):
        parameters.SetParameter("Overlay", overlay)
        logic.showComparison(parameters)
        if number == 0:
            panels.append(panel("Red"))
            titles.append(("Red: simulated 4x low resolution (input)", (243, 74, 51)))
        panels.append(panel("Yellow"))
        titles.append((f"Yellow: LatentSR + {PANEL_TITLES.get(overlay, overlay + ' overlay')}"
                       + ("" if args.hide_hallucination else ", hallucinated / lost pixels"), (237, 213, 76)))

    table = parameters.GetNodeReference("MetricsTable")
    rows = [[table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]]
    rows += [[table.GetCellText(r, c) for c in range(table.GetNumberOfColumns())] for r in range(table.GetNumberOfRows())]
    tolerance = parameters.GetParameter("TrustTolerance")
    titles = [(text.replace("{tolerance}", tolerance), colour) for text, colour in titles]
    status = calibrationStatus(json.loads(parameters.GetParameter("Metrics")))
    line = 16
    header = 24
    canvas = Image.new("RGB", (len(panels) * (args.size + 6) - 6, header + args.size + 12 + line * (len(rows) + 1)),
                       (36, 36, 36))
    draw = ImageDraw.Draw(canvas)
    for number, (panel_image, (title, colour)) in enumerate(zip(panels, titles)):
        draw.text((number * (args.size + 6) + 8, 6), title, fill=colour)
        canvas.paste(panel_image, (number * (args.size + 6), header))
    top = header + args.size + 8
    columns = [8]
    for c in range(2):  # each column starts after the widest text of the one before
        columns.append(columns[-1] + 24 + int(max(draw.textlength(row[c]) for row in rows)))
    for i, row in enumerate(rows):
        for x, text in zip(columns, row):
            draw.text((x, top + i * line), text, fill=(255, 255, 255) if i else (170, 200, 255))
    if status:
        draw.text((8, top + len(rows) * line), status, fill=(200, 200, 200))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output) as tmp:
        canvas.save(tmp, format="PNG")
    print(f"wrote {output}")
    headless.close_scene(scene)
    return 0


PANEL_TITLES = {
    "difference": "difference SR - HR",
    "interval": "calibrated interval half-width",
    "trust": "trust mask (magenta: half-width > {tolerance})",
}


def crop_slices(image, start: int, count: int):
    """``count`` slices of ``image`` from array index ``start`` along its first (slowest) axis, geometry kept."""
    from LatentSRLib.io import MedicalImage

    origin = tuple((image.index_to_world() @ np.array([0, 0, start, 1.0]))[:3])
    return MedicalImage(np.ascontiguousarray(image.array[start:start + count]), image.spacing, origin, image.direction)


if __name__ == "__main__":
    raise SystemExit(main())
