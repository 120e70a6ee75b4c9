"""The U^2-Netp peer at any input size: the shape-polymorphic copy of its graph is the same function at 320 px, and
`predict_native` runs it on the image as given (the size-controlled robustness comparison)."""

import numpy as np
import pytest
from PIL import Image

from benchmarks import u2netp_peer as peer
from menet_jax.io.images import load_photo

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def sessions():
    fixed = ort.InferenceSession(str(peer.fetch_onnx()), providers=["CPUExecutionProvider"])
    return fixed, ort.InferenceSession(str(peer.any_size_onnx()), providers=["CPUExecutionProvider"])


def test_the_any_size_copy_is_the_same_function_at_320_px(sessions):
    fixed, any_size = sessions
    x = np.random.default_rng(0).normal(size=(1, 3, 320, 320)).astype(np.float32)
    for a, b in zip(fixed.run(None, {"input.1": x}), any_size.run(None, {"input.1": x}), strict=True):
        np.testing.assert_array_equal(a, b)
    batch = np.random.default_rng(1).normal(size=(2, 3, 160, 96)).astype(np.float32)
    assert any_size.run(None, {"input.1": batch})[0].shape == (2, 1, 160, 96)


def test_predict_native_runs_on_the_image_as_given(shared_data):
    photo = load_photo(shared_data / "ECSSD" / "images" / "0001.jpg")
    mask = np.asarray(Image.open(shared_data / "ECSSD" / "masks" / "0001.png").convert("L").resize((160, 160))) >= 128
    at_320 = np.asarray(Image.fromarray(photo).resize((320, 320), Image.BILINEAR))
    # At the network's own 320 px nothing is resized, so both hooks compute the same map.
    np.testing.assert_array_equal(peer.predict_native([at_320])[0], peer.predict([at_320])[0])
    small = np.asarray(Image.fromarray(photo).resize((160, 160), Image.BILINEAR))
    (saliency,) = peer.predict_native([small])
    assert saliency.shape == (160, 160) and 0 <= saliency.min() and saliency.max() <= 1
    assert saliency[mask].mean() - saliency[~mask].mean() > 0.5  # a saliency map of this image, at 160 px
