"""Make a small folder of real-photo JPEGs, offline, for benchmarks and the photo check.

A thin wrapper over `edgecnn.builtin_datasets.write_photos` (also `edgecnn datasets photos OUT`): each class
is one real photograph shipped inside an installed package (scikit-learn's china.jpg and flower.jpg;
scikit-image's astronaut, chelsea the cat, coffee and rocket when scikit-image is installed); its
images are random crops (30-80% of the short side, random position and horizontal flip) resized to
--size and saved as JPEG. Nothing is downloaded.

    python -m tools.make_photo_dataset data/photos --per-class 100 --size 256
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgecnn.builtin_datasets import write_photos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="output folder (OUT/<class>/<n>.jpg)")
    parser.add_argument("--per-class", type=int, default=100, help="images per class (default 100)")
    parser.add_argument("--size", type=int, default=256, help="side of each JPEG in pixels (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--classes", default="", help="comma list of photos (default: every one installed)")
    args = parser.parse_args()
    classes = tuple(c for c in args.classes.split(",") if c) or None
    out = write_photos(args.out, True, args.per_class, args.size, args.seed, classes)
    names = sorted(p.name for p in out.iterdir() if p.is_dir())
    print(f"wrote {args.per_class * len(names)} JPEGs in {len(names)} classes to {out}: {', '.join(names)}")


if __name__ == "__main__":
    main()
