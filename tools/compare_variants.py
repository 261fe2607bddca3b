"""Top-1 agreement and accuracy of two ONNX variants (e.g. FP32 vs INT8) over folders of real images.

    python -m tools.compare_variants models/photos-resnet50/model.onnx models/photos-resnet50/model.int8.onnx \
        data/photos data/photos-large
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reference", type=Path, help="the reference model (e.g. model.onnx)")
    parser.add_argument("candidate", type=Path, help="the variant to check (e.g. model.int8.onnx)")
    parser.add_argument("folders", type=Path, nargs="+", help="image folders (labelled class subfolders give accuracy)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()

    from edgecnn.predict import PredictConfig, predict
    from edgecnn.runtime import RunnerConfig

    out = {"reference": str(args.reference), "candidate": str(args.candidate), "folders": []}
    for folder in args.folders:
        runs = [
            predict(PredictConfig(model=m, inputs=(folder,), top_k=1, runner=RunnerConfig(device="cpu")))
            for m in (args.reference, args.candidate)
        ]
        ref = {r.path: r.label for r in runs[0].rows if r.error is None}
        cand = {r.path: r.label for r in runs[1].rows if r.error is None}
        common = sorted(set(ref) & set(cand))
        agree = sum(ref[p] == cand[p] for p in common)
        row = {
            "folder": str(folder),
            "images": len(common),
            "agreement": agree / len(common),
            "reference_accuracy": runs[0].accuracy,
            "candidate_accuracy": runs[1].accuracy,
        }
        out["folders"].append(row)
        print(
            f"{folder}: {len(common)} images, top-1 agreement {row['agreement']:.2%}, accuracy "
            f"{_pct(row['reference_accuracy'])} -> {_pct(row['candidate_accuracy'])}"
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


def _pct(x):
    return "n/a" if x is None else f"{x:.2%}"


if __name__ == "__main__":
    main()
