"""robustness.distortions: AWGN statistics and clipping, Pillow JPEG round trips, seeding, presets."""

import io

import numpy as np
import pytest
from PIL import Image

from menet_datasets import FolderSource
from robustness import distortions as d


def test_awgn_has_the_requested_statistics_and_sigma_equals_sqrt_variance():
    grey = np.full((200, 200, 3), 128, np.uint8)
    noisy = d.awgn(grey, d.image_rng(0, 0), sigma=10.0).astype(np.float64) - 128
    assert abs(noisy.mean()) < 0.1 and noisy.std() == pytest.approx(10.0, rel=0.02)
    same = d.awgn(grey, d.image_rng(0, 0), variance=100.0)
    assert np.array_equal(same, d.awgn(grey, d.image_rng(0, 0), sigma=10.0))
    assert np.array_equal(d.awgn(grey, d.image_rng(0, 0), sigma=0.0), grey)
    with pytest.raises(ValueError):
        d.awgn(grey, d.image_rng(0, 0), sigma=1.0, variance=1.0)


def test_awgn_clips_to_the_8_bit_range():
    white = np.full((64, 64, 3), 250, np.uint8)
    noisy = d.awgn(white, d.image_rng(1, 0), sigma=40.0)
    assert noisy.dtype == np.uint8 and noisy.max() == 255
    # Clipping removes the upper tail: the mean drops below 250 (it would stay at 250 unclipped).
    assert noisy.astype(float).mean() < 245


def test_generators_depend_on_seed_index_and_name_only():
    a = d.image_rng(3, 7, "x").normal(size=5)
    assert np.array_equal(a, d.image_rng(3, 7, "x").normal(size=5))
    for other in (d.image_rng(4, 7, "x"), d.image_rng(3, 8, "x"), d.image_rng(3, 7, "y")):
        assert not np.array_equal(a, other.normal(size=5))


def test_batches_do_not_change_an_images_noise(shared_data):
    source = FolderSource(shared_data / "ECSSD")
    examples = [source[i] for i in range(3)]
    images, names = [e["image"] for e in examples], [e["name"] for e in examples]
    batch, levels = d.distort_batch(images, "awgn", "random", seed=5, indices=[0, 1, 2], names=names)
    alone, level = d.distort_batch(images[2:], "awgn", "random", seed=5, indices=[2], names=names[2:])
    assert np.array_equal(batch[2], alone[0]) and levels[2] == level[0]
    lo, hi = d.RANDOM_RANGES["awgn"]
    assert all((lo * 255) ** 2 <= v <= (hi * 255) ** 2 for v in levels) and len(set(levels)) == 3
    assert not np.array_equal(batch[0], images[0]) and batch[0].shape == images[0].shape


def test_jpeg_is_a_pillow_round_trip_with_fixed_subsampling(shared_data):
    image = FolderSource(shared_data / "ECSSD")[10]["image"]
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=15, subsampling="4:2:0")
    expected = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    assert np.array_equal(d.jpeg(image, 15), expected)
    errors = [np.abs(d.jpeg(image, q).astype(float) - image).mean() for q in (95, 25, 7)]
    assert errors[0] < errors[1] < errors[2]
    with pytest.raises(ValueError):
        d.jpeg(image, 0)


def test_presets_and_random_strengths():
    assert d.severity_levels("awgn") == pytest.approx([(s * 255) ** 2 for s in (0.08, 0.12, 0.18, 0.26, 0.38)])
    assert d.severity_levels("jpeg") == [25, 18, 15, 10, 7]
    rng = np.random.default_rng(0)
    qualities = {d.random_level("jpeg", rng) for _ in range(400)}
    assert qualities == set(float(q) for q in range(7, 26))
    with pytest.raises(ValueError):
        d.distort(np.zeros((4, 4, 3), np.uint8), "blur", 1, rng)


def test_only_levels_that_draw_random_numbers_need_seeds():
    from robustness.distortions import is_random

    assert is_random("awgn", 416.0) and is_random("awgn", "random") and is_random("jpeg", "random")
    assert not is_random("awgn", 0.0) and not is_random("jpeg", 10.0)


def test_to_input_size_is_the_predictors_resize():
    from PIL import Image

    from robustness.distortions import to_input_size

    image = np.random.default_rng(0).integers(0, 256, (30, 50, 3)).astype(np.uint8)
    resized = to_input_size(image, 32)
    assert resized.shape == (32, 32, 3) and resized.dtype == np.uint8
    np.testing.assert_array_equal(resized, np.asarray(Image.fromarray(image).resize((32, 32), Image.BILINEAR)))
    assert to_input_size(resized, 32) is not None and np.array_equal(to_input_size(resized, 32), resized)
