"""One-off: mIoU of the IRN and CRF pseudo masks on the images the (unfinished) IRN walk had written (README)."""
import json
from pathlib import Path

from vwl_lightning.data.label_png import read_label_png
from vwl_lightning.evaluation.metrics import SegmentationConfusion

irn = Path("/tmp/irn_runs/s1_irn/pseudo/masks")
crf = Path("/tmp/irn_runs/s1_crf/pseudo/masks")
man = json.load(open("/tmp/irn_runs/s1_crf/pseudo/manifest.json"))
root = Path(man["data_root"])
ids = sorted(p.stem for p in irn.glob("*.png") if not p.name.startswith(".tmp"))
names = man["class_names"]
out = {}
for name, folder in (("irn", irn), ("crf", crf)):
    m = SegmentationConfusion(len(names), sync_on_compute=False)
    for i in ids:
        gt = root / "SegmentationClassAug" / f"{i}.png"
        m.update(read_label_png(folder / f"{i}.png"), read_label_png(gt), name=str(gt))
    out[name] = m.scores()["miou"]
print(len(ids), out)
