"""Make a small folder of real-photo JPEGs, offline, for benchmarks and the photo check.

Each class is one real photograph shipped inside an installed package (scikit-learn's
china.jpg and flower.jpg; scikit-image's astronaut, chelsea the cat, coffee and rocket when
scikit-image is installed); its images are random crops (30-80% of the short side, random
position and horizontal flip) resized to --size and saved as JPEG. Nothing is downloaded.

    python tools/make_photo_dataset.py data/photos --per-class 100 --size 256
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def source_photos() -> dict[str, Path]:
    found: dict[str, Path] = {}
    import sklearn

    images = Path(sklearn.__file__).parent / "datasets" / "images"
    for name in ("china", "flower"):
        found[name] = images / f"{name}.jpg"
    try:
        import skimage

        data = Path(skimage.__file__).parent / "data"
        for name, file in (
            ("astronaut", "astronaut.png"),
            ("cat", "chelsea.png"),
            ("coffee", "coffee.png"),
            ("rocket", "rocket.jpg"),
        ):
            if (data / file).is_file():
                found[name] = data / file
    except ImportError:
        pass
    return found


def make(out: Path, per_class: int, size: int, seed: int) -> dict[str, int]:
    rng = np.random.default_rng(seed)
    counts = {}
    for name, path in sorted(source_photos().items()):
        photo = Image.open(path).convert("RGB")
        w, h = photo.size
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            side = int(min(w, h) * rng.uniform(0.3, 0.8))
            x = int(rng.integers(0, w - side + 1))
            y = int(rng.integers(0, h - side + 1))
            crop = photo.crop((x, y, x + side, y + side)).resize((size, size), Image.BILINEAR)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            crop.save(folder / f"{name}_{i:04d}.jpg", quality=90)
        counts[name] = per_class
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="output folder (OUT/<class>/<n>.jpg)")
    parser.add_argument("--per-class", type=int, default=100, help="images per class (default 100)")
    parser.add_argument("--size", type=int, default=256, help="side of each JPEG in pixels (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args()
    counts = make(args.out, args.per_class, args.size, args.seed)
    print(f"wrote {sum(counts.values())} JPEGs in {len(counts)} classes to {args.out}: {', '.join(counts)}")


if __name__ == "__main__":
    main()
