"""Render the module's compare view of a real case, headless, to a PNG (the README's screenshot).

    .venv/bin/python Testing/extension/render_screenshot.py --model MODEL_FOLDER \
        --volume ../shared/data/brain/BraTS-GLI-00001-000-t2f.nii.gz \
        --mask ../shared/data/brain/BraTS-GLI-00001-000-wt-approx.nii.gz \
        -o Resources/Screenshots/LatentSR-compare.png

Runs the module's Logic exactly as the Apply button does (simulate low resolution, the model,
the maps, the metrics table), shows the comparison, renders the Red (simulated LR) and Yellow (SR with
the difference overlay and the hallucination label map) slice views through vtkMRMLSliceLogic, and
lays them out side by side above the metrics table.
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
    parser.add_argument("--overlay", default="difference")
    parser.add_argument("--size", type=int, default=420, help="pixels per view")
    parser.add_argument("--data-consistency", action="store_true", help="the module's data-consistency option")
    parser.add_argument("--model-resolution", action="store_true",
                        help="first put the volume (and mask) at the model grid's resolution, as `latentsr demo` does")
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args(argv)

    from PIL import Image, ImageDraw

    from LatentSRLib.io import atomic_path, read_image
    from LatentSRLogic import LatentSRLogic

    scene = headless.make_scene()
    slicer = headless.slicer
    logic = LatentSRLogic()
    import json

    from LatentSRLib.demo import at_model_resolution

    grid = max(json.loads((Path(args.model) / "config.json").read_text())["grid"]["size"])
    prepare = (lambda image: at_model_resolution(image, "axial", grid)) if args.model_resolution else (lambda image: image)
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", Path(args.volume).name.split(".")[0])
    LatentSRLogic.updateVolumeNodeFromImage(volume, prepare(read_image(args.volume)))
    parameters = logic.getParameterNode()
    parameters.SetNodeReferenceID("InputVolume", volume.GetID())
    tumour_slice = volume.GetImageData().GetDimensions()[2] // 2
    if args.mask:
        labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "mask")
        mask = prepare(read_image(args.mask).with_array((read_image(args.mask).array > 0).astype(np.float32)))
        mask = mask.with_array((mask.array > 0.5).astype(np.uint8))
        LatentSRLogic.updateVolumeNodeFromImage(labels, mask)
        parameters.SetNodeReferenceID("Segmentation", labels.GetID())
        tumour_slice = int(np.argmax((mask.array > 0).reshape(mask.array.shape[0], -1).sum(1)))
    parameters.SetParameter("ModelPath", args.model)
    parameters.SetParameter("Simulate", "true")
    parameters.SetParameter("Steps", str(args.steps))
    parameters.SetParameter("DataConsistency", "true" if args.data_consistency else "false")
    parameters.SetParameter("Device", "auto")
    parameters.SetParameter("Overlay", args.overlay)
    parameters.SetParameter("OverlayOpacity", "0.45")
    logic.process(parameters, progress=lambda fraction, message: print(f"\r{message}", end="", flush=True))
    print()
    logic.showComparison(parameters)

    from vtk.util.numpy_support import vtk_to_numpy

    ras = LatentSRLogic.ijkToRas(volume) @ np.array([0, 0, tumour_slice, 1.0])
    panels = []
    for name in ("Red", "Yellow"):
        view = scene.views[name]
        view.GetSliceNode().SetDimensions(args.size, args.size, 1)
        view.FitSliceToAll()
        view.SetSliceOffset(float(ras[2]))
        producer = view.GetImageDataConnection().GetProducer()
        producer.Update()
        image = producer.GetOutputDataObject(0)
        width, height, _ = image.GetDimensions()
        pixels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)[::-1, :, :3]
        panels.append(Image.fromarray(np.ascontiguousarray(pixels)))

    table = parameters.GetNodeReference("MetricsTable")
    rows = [[table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]]
    rows += [[table.GetCellText(r, c) for c in range(table.GetNumberOfColumns())] for r in range(table.GetNumberOfRows())]
    line = 16
    header = 24
    canvas = Image.new("RGB", (2 * args.size + 6, header + args.size + 12 + line * len(rows)), (36, 36, 36))
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 6), "Red: simulated 4x low resolution (input)", fill=(243, 74, 51))
    draw.text((args.size + 14, 6), f"Yellow: LatentSR + {args.overlay} overlay, hallucinated / lost pixels",
              fill=(237, 213, 76))
    canvas.paste(panels[0], (0, header))
    canvas.paste(panels[1], (args.size + 6, header))
    top = header + args.size + 8
    for i, row in enumerate(rows):
        for x, text in zip((8, 330, 420), row):
            draw.text((x, top + i * line), text, fill=(255, 255, 255) if i else (170, 200, 255))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output) as tmp:
        canvas.save(tmp, format="PNG")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
