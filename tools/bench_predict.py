"""Does `edgecnn predict` hide JPEG decoding behind inference?

Runs `edgecnn.predict.predict` over a folder of real JPEGs --repeats times and, in the same
process, the model-only throughput at the same batch size (`edgecnn.profile`), then prints
the ratio predict / model-only (target: at least 0.85).

    python -m tools.bench_predict models/photos-resnet50-224/model.int8.onnx data/photos --batch-size 32
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help=".onnx model with edgecnn metadata")
    parser.add_argument("images", type=Path, help="folder of JPEGs")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size for both (default 32)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each; medians reported (default 3)")
    parser.add_argument("--iterations", type=int, default=20, help="model-only batches per run (default 20)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()

    from edgecnn.predict import PredictConfig, predict
    from edgecnn.profile import ProfileConfig, profile_models
    from edgecnn.runtime import RunnerConfig

    cpu = RunnerConfig(device="cpu")
    predict_ips, model_ips = [], []
    for _ in range(args.repeats):
        result = predict(PredictConfig(model=args.model, inputs=(args.images,), batch_size=args.batch_size, runner=cpu))
        predict_ips.append(result.images_per_second)
        report = profile_models(
            [args.model],
            ProfileConfig(batch_sizes=(args.batch_size,), iterations=args.iterations, warmup=2, runner=cpu),
        )
        model_ips.append(report.models[0].stats(args.batch_size).images_per_second)
        print(
            f"predict {predict_ips[-1]:8.1f} images/s ({result.count} images)   model only {model_ips[-1]:8.1f} images/s",
            flush=True,
        )
    p, m = statistics.median(predict_ips), statistics.median(model_ips)
    out = {
        "model": str(args.model),
        "images": str(args.images),
        "batch_size": args.batch_size,
        "predict_images_per_second": round(p, 1),
        "model_only_images_per_second": round(m, 1),
        "ratio": round(p / m, 3),
        "runs": {"predict": predict_ips, "model_only": model_ips},
    }
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
