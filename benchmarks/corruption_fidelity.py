"""How close `robustness.corruptions` is to ImageNet-C as released, measured against independent oracles.

    python benchmarks/corruption_fidelity.py              # 8 ECSSD images at 224 px, all 15 corruptions
    python benchmarks/corruption_fidelity.py -n 4 --corruptions frost,motion_blur

Oracles (never part of the project, only run here):
* `imagecorruptions` 1.1.2 (bethgelab), a maintained port of the release, fed the *same random draws*: both sides
  draw from numpy's global generator seeded alike (ours through `LegacyDraws`, a Generator-shaped view of it, in
  the release's draw order). Column `MAD`: mean absolute difference ours - theirs, grey levels, per severity.
* Where the draws cannot be matched (impulse_noise: scikit-image draws from its own fresh generator) or the port
  departs from the release (elastic_transform: it dropped the release's affine warp and changed alpha / sigma):
  the mean change from the clean image, ours / theirs, and their ratio.
* frost: the release's frost photographs (shipped inside imagecorruptions, read from the installed package) are
  the oracle: the release's draw (one of the first five photos, a random 224 px crop, the published weights) over
  every photo and `--crops` crops; ours over as many seeds. Mean change and ratio per severity.
* motion_blur: also ImageMagick itself (`convert -motion-blur RADIUSxSIGMA+ANGLE`, what the release calls through
  Wand) on a one-dot image: the kernel's taps and weights, MAD in grey levels of a 255 dot; and on the images.

Images: the first N ECSSD images (sorted), resized to 224 x 224 (the release's input size; area interpolation).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import types
import warnings
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robustness import corruptions as C  # noqa: E402

SIZE = 224
# The port departs from the release here, so only the strength is compared (see the module doc).
STRENGTH_ONLY = ("impulse_noise", "elastic_transform")


class LegacyDraws:
    """The `np.random.Generator` methods `robustness.corruptions` uses, drawn from numpy's global (legacy) generator
    so that ours and the release's code, seeded alike, see the same numbers where they draw in the same order."""

    def uniform(self, low=0.0, high=1.0, size=None):
        return np.random.uniform(low, high, size)

    def normal(self, loc=0.0, scale=1.0, size=None):
        return np.random.normal(loc, scale, size)

    def poisson(self, lam=1.0, size=None):
        return np.random.poisson(lam, size)

    def integers(self, low, high=None, size=None):
        return np.random.randint(low, high, size)

    def random(self, size=None):
        return np.random.random_sample(size)

    def exponential(self, scale=1.0, size=None):
        return np.random.exponential(scale, size)

    def choice(self, a, size=None):
        return np.random.choice(a, size)


def convert_binary() -> str | None:
    """The real ImageMagick 6 `convert` (a `convert` earlier on PATH may be something else)."""
    found = shutil.which("convert-im6.q16") or "/usr/bin/convert"
    return found if os.path.exists(found) else None


def load_imagecorruptions():
    """imagecorruptions, or None. It imports pkg_resources (gone from setuptools >= 81) only to locate its frost
    photos: a stand-in for that lookup is provided while it imports, nothing else is patched."""
    if importlib.util.find_spec("imagecorruptions") is None:
        return None
    stubbed = "pkg_resources" not in sys.modules and importlib.util.find_spec("pkg_resources") is None
    if stubbed:
        stub = types.ModuleType("pkg_resources")
        stub.resource_filename = lambda pkg, name: os.path.join(
            os.path.dirname(importlib.util.find_spec(pkg).origin), name
        )
        sys.modules["pkg_resources"] = stub
    try:
        with warnings.catch_warnings():  # its `scipy.ndimage.interpolation` import: deprecated, still working
            warnings.simplefilter("ignore", DeprecationWarning)
            import imagecorruptions
    finally:
        if stubbed:
            sys.modules.pop("pkg_resources", None)
    _modernise(imagecorruptions.corruptions)
    return imagecorruptions


class _NumpyWithFloat_(types.ModuleType):
    """numpy as the port expects it: `np.float_` (removed in numpy 2) is float64; everything else is numpy's."""

    float_ = np.float64

    def __getattr__(self, name):
        return getattr(np, name)


def _modernise(module) -> None:
    """Two APIs the port (2019) calls were removed since, renamed only: scikit-image's `gaussian(multichannel=True)`
    is `channel_axis=-1` (>= 0.19), numpy's `np.float_` is `np.float64` (>= 2.0). Patched in the port's module only,
    so its arithmetic is untouched."""
    if getattr(module, "_modernised", False):
        return
    gaussian = module.gaussian

    def gaussian_compat(image, *args, multichannel=False, **kwargs):
        if multichannel:
            kwargs["channel_axis"] = -1
        return gaussian(image, *args, **kwargs)

    module.gaussian = gaussian_compat
    module.np = _NumpyWithFloat_("numpy")
    module._modernised = True


def load_release(path: Path, ic):
    """The release's own corruptions.py (hendrycks/robustness, ImageNet-C/imagenet_c/imagenet_c/corruptions.py,
    a local copy given with --release), imported with ImageMagick's Wand stubbed out (only motion_blur and snow
    call it: those are compared with ImageMagick directly) and its frost-photo lookup pointed at the photos inside
    imagecorruptions."""
    wand = types.ModuleType("wand")
    stubs = {"wand": wand}
    for sub, attrs in (
        ("image", {"Image": type("Image", (), {})}),
        ("api", {"library": types.SimpleNamespace(MagickMotionBlurImage=types.SimpleNamespace())}),
        ("color", {}),
    ):
        module = types.ModuleType(f"wand.{sub}")
        module.__dict__.update(attrs)
        setattr(wand, sub, module)
        stubs[f"wand.{sub}"] = module
    frost_dir = Path(ic.__file__).parent
    resources = types.ModuleType("pkg_resources")
    resources.resource_filename = lambda pkg, name: str(frost_dir / name)
    saved = {name: sys.modules.get(name) for name in [*stubs, "pkg_resources"]}
    sys.modules.update(stubs, pkg_resources=resources)
    try:
        spec = importlib.util.spec_from_file_location("imagenet_c_release", path)
        release = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(release)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    _modernise(release)
    return release


def frost_photos(ic) -> list[np.ndarray]:
    """The release's frost photographs as RGB uint8, the five its `randint(5)` can pick (frost6 is never drawn)."""
    folder = Path(ic.__file__).parent / "frost"
    names = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")
    return [cv2.imread(str(folder / name))[..., ::-1] for name in names]


def mad(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean())


def load_images(n: int, data_dir: Path) -> list[np.ndarray]:
    paths = sorted((data_dir / "images").glob("*.jpg"))[:n]
    if len(paths) < n:
        raise SystemExit(f"error: fewer than {n} images under {data_dir / 'images'}")
    return [cv2.resize(cv2.imread(str(p))[..., ::-1], (SIZE, SIZE), interpolation=cv2.INTER_AREA) for p in paths]


def ours(image, name, severity, seed):
    np.random.seed(seed)
    return C.corrupt(image, name, severity, LegacyDraws())


def theirs(ic, image, name, severity, seed):
    np.random.seed(seed)
    return ic.corrupt(image, corruption_name=name, severity=severity)


def release(module, image, name, severity, seed):
    from PIL import Image

    np.random.seed(seed)
    return np.uint8(getattr(module, name)(Image.fromarray(image), severity))


def release_frost_change(image, severity, photos, crops: int, seed: int = 0) -> float:
    """Mean change of the release's frost over every photo and `crops` random 224 px crops of each (the release:
    `c0 x + c1 crop`, clipped, truncated to uint8)."""
    a, b = C.PARAMS["frost"][severity - 1]
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    changes = []
    for photo in photos:
        for _ in range(crops):
            top, left = rng.integers(0, photo.shape[0] - h), rng.integers(0, photo.shape[1] - w)
            crop = photo[top : top + h, left : left + w].astype(np.float64)
            changes.append(mad(np.uint8(np.clip(a * image + b * crop, 0, 255)), image))
    return float(np.mean(changes))


def our_frost_change(image, severity, seeds: int, first_seed: int = 0) -> float:
    """Mean change of ours over `seeds` textures (the release's counterpart: every photo, several crops)."""
    seeds = range(first_seed, first_seed + seeds)
    return float(np.mean([mad(C.frost(image, severity, np.random.default_rng(s)), image) for s in seeds]))


def imagemagick_kernel(convert: str, radius: int, sigma: float, angle: float, size: int = 61) -> np.ndarray:
    """ImageMagick's motion blur of one white dot in the middle of a black 16 bit image, on [0, 1]."""
    dot = np.zeros((size, size), np.uint16)
    dot[size // 2, size // 2] = 65535
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "dot.png"), os.path.join(tmp, "out.png")
        cv2.imwrite(src, dot)
        subprocess.run([convert, src, "-motion-blur", f"{radius}x{sigma}+{angle}", "-depth", "16", dst], check=True)
        out = cv2.imread(dst, cv2.IMREAD_UNCHANGED).astype(np.float64) / 65535.0
    return out if out.ndim == 2 else out[..., 0]


def our_kernel(radius: int, sigma: float, angle: float, size: int = 61) -> np.ndarray:
    dot = np.zeros((size, size, 1), np.float32)
    dot[size // 2, size // 2] = 1.0
    return C.motion_kernel_blur(dot, radius, sigma, angle)[..., 0].astype(np.float64)


def imagemagick_motion_blur(convert: str, image, radius, sigma, angle) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.png"), os.path.join(tmp, "out.png")
        cv2.imwrite(src, image[..., ::-1])
        subprocess.run([convert, src, "-motion-blur", f"{radius}x{sigma}+{angle}", dst], check=True)
        return cv2.imread(dst)[..., ::-1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--images", type=int, default=8, help="ECSSD images (default 8)")
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/ECSSD")
    parser.add_argument("--corruptions", default=None, help="names or families (default: all 15)")
    parser.add_argument("--crops", type=int, default=20, help="frost: crops per photo; our textures: 5 x this")
    parser.add_argument(
        "--release",
        type=Path,
        default=None,
        help="a local copy of the release's imagenet_c/corruptions.py: also compare with it, same draws",
    )
    args = parser.parse_args(argv)
    ic = load_imagecorruptions()
    if ic is None:
        raise SystemExit("error: imagecorruptions is not installed (pip install --no-deps imagecorruptions==1.1.2)")
    convert = convert_binary()
    names = C.parse_names(args.corruptions)
    module = load_release(args.release, ic) if args.release else None
    images = load_images(args.images, args.data_dir)
    print(f"{len(images)} ECSSD images at {SIZE} x {SIZE}; grey levels (0..255)\n")
    print("| corruption | compared | s1 | s2 | s3 | s4 | s5 |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        if name == "frost":
            photos = frost_photos(ic)
            rows = {"ours": [], "release": []}
            for severity in C.SEVERITIES:
                rows["ours"].append(
                    np.mean([our_frost_change(x, severity, 5 * args.crops, 1000 * k) for k, x in enumerate(images)])
                )
                rows["release"].append(
                    np.mean([release_frost_change(x, severity, photos, args.crops, k) for k, x in enumerate(images)])
                )
            ratio = [o / r for o, r in zip(rows["ours"], rows["release"])]
            pairs = " | ".join(f"{o:.1f} / {r:.1f}" for o, r in zip(rows["ours"], rows["release"]))
            print(f"| frost | change ours / release photos | {pairs} |")
            print(f"| frost | ratio | {' | '.join(f'{q:.2f}' for q in ratio)} |")
            continue
        # The release itself, where it runs without ImageMagick (not impulse_noise: scikit-image's own draws).
        if module is not None and name not in ("motion_blur", "snow", "impulse_noise"):
            cells = [
                np.mean([mad(ours(x, name, s, k), release(module, x, name, s, k)) for k, x in enumerate(images)])
                for s in C.SEVERITIES
            ]
            print(f"| {name} | MAD vs the release, same draws | {' | '.join(f'{c:.2f}' for c in cells)} |")
        if name in STRENGTH_ONLY:
            cells, ratios = [], []
            for severity in C.SEVERITIES:
                o = np.mean([mad(ours(x, name, severity, k), x) for k, x in enumerate(images)])
                t = np.mean([mad(theirs(ic, x, name, severity, k), x) for k, x in enumerate(images)])
                cells.append(f"{o:.1f} / {t:.1f}")
                ratios.append(f"{o / t:.2f}")
            print(f"| {name} | change ours / imagecorruptions | {' | '.join(cells)} |")
            print(f"| {name} | ratio | {' | '.join(ratios)} |")
            continue
        cells = []
        for severity in C.SEVERITIES:
            cells.append(
                np.mean(
                    [mad(ours(x, name, severity, k), theirs(ic, x, name, severity, k)) for k, x in enumerate(images)]
                )
            )
        print(f"| {name} | MAD vs imagecorruptions, same draws | {' | '.join(f'{c:.2f}' for c in cells)} |")
        if name == "motion_blur" and convert:
            kernel_cells, image_cells = [], []
            for severity in C.SEVERITIES:
                radius, sigma = C.PARAMS["motion_blur"][severity - 1]
                angles = np.random.default_rng(severity).uniform(-45, 45, len(images))
                kernel_cells.append(
                    max(
                        np.abs(our_kernel(radius, sigma, a) - imagemagick_kernel(convert, radius, sigma, a)).sum()
                        for a in angles[:3]
                    )
                )
                image_cells.append(
                    np.mean(
                        [
                            mad(
                                C._to_uint8(C.motion_kernel_blur(C._unit(x), radius, sigma, a)),
                                imagemagick_motion_blur(convert, x, radius, sigma, a),
                            )
                            for x, a in zip(images, angles)
                        ]
                    )
                )
            label = "one-dot kernel, L1 vs ImageMagick (0 same, 2 disjoint; worst of 3 angles)"
            print(f"| motion_blur | {label} | {' | '.join(f'{c:.3f}' for c in kernel_cells)} |")
            print(f"| motion_blur | MAD vs ImageMagick, same angle | {' | '.join(f'{c:.2f}' for c in image_cells)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
