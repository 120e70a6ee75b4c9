"""Tests for the ``menet_datasets`` package (the datasets/ folder): folder datasets, synthetic scenes, pipeline."""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import one_line_message
from PIL import Image

import menet_datasets
from menet_datasets import (
    BatchLoader,
    DataError,
    FolderSource,
    Subset,
    SyntheticSource,
    augment,
    batch_indices,
    eval_batches,
    find_pairs,
    load_image,
    load_mask,
    make_batch,
    pipeline,
    resize_pair,
    split,
)


def _write_rgb(path: Path, h: int, w: int, seed: int = 0) -> np.ndarray:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def _write_mask(path: Path, h: int, w: int, value=None) -> np.ndarray:
    if value is None:
        arr = np.zeros((h, w), np.uint8)
        arr[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 255
    else:
        arr = np.full((h, w), value, np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def _make_folder(root: Path, stems=("a", "b", "c"), h=20, w=30) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for k, stem in enumerate(stems):
        _write_rgb(root / "images" / f"{stem}.png", h, w, seed=k)
        _write_mask(root / "masks" / f"{stem}.png", h, w)
    return root


class ListSource:
    """A tiny in-memory source whose examples encode their index."""

    def __init__(self, n: int, h: int = 12, w: int = 16):
        self.items = []
        for i in range(n):
            image = np.full((h, w, 3), i, np.uint8)
            mask = np.zeros((h, w), np.uint8)
            mask[:, : (i % w) + 1] = 255
            self.items.append({"image": image, "mask": mask, "name": f"ex{i}"})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class FailingSource(ListSource):
    def __init__(self, n: int, bad: int):
        super().__init__(n)
        self.bad = bad

    def __getitem__(self, i):
        if i == self.bad:
            raise DataError(f"/nowhere/bad_{i}.jpg: cannot read image (broken)")
        return super().__getitem__(i)


def _loader_threads():
    return [t for t in threading.enumerate() if t.name.startswith("BatchLoader")]


# --------------------------------------------------------------------------- package


def test_public_api_is_exported():
    for name in menet_datasets.__all__:
        assert hasattr(menet_datasets, name), name
    assert issubclass(DataError, ValueError)
    assert menet_datasets.IMAGE_EXTS == (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


# --------------------------------------------------------------------------- real data


def test_duts_subset_pairs_load(shared_data):
    src = FolderSource(shared_data / "DUTS-TR-subset")
    assert len(src) == len(list((shared_data / "DUTS-TR-subset" / "images").glob("*.jpg")))
    assert len(src) > 100
    stems = [img.stem for img, _ in src.pairs]
    assert stems == sorted(stems)
    assert all(img.stem == m.stem for img, m in src.pairs)
    soft_edges = 0
    for i in np.linspace(0, len(src) - 1, 12).astype(int):
        ex = src[int(i)]
        img, mask = ex["image"], ex["mask"]
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert mask.dtype == np.uint8 and mask.shape == img.shape[:2]
        assert set(np.unique(mask)) <= {0, 255}
        assert 0 < (mask == 255).mean() < 1
        assert ex["name"] == src.pairs[int(i)][0].stem
        raw = np.asarray(Image.open(src.pairs[int(i)][1]).convert("L"))
        np.testing.assert_array_equal(mask == 255, raw >= 128)
        soft_edges += int(((raw > 0) & (raw < 255)).any())
    assert soft_edges > 0  # the binarisation was actually exercised


def test_ecssd_greyscale_image_loads_as_rgb(shared_data):
    path = shared_data / "ECSSD" / "images" / "0557.jpg"
    assert Image.open(path).mode == "L"
    img = load_image(path)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    np.testing.assert_array_equal(img[..., 0], img[..., 1])
    np.testing.assert_array_equal(img[..., 0], np.asarray(Image.open(path)))
    src = FolderSource(shared_data / "ECSSD")
    ex = src[[p.stem for p, _ in src.pairs].index("0557")]
    assert ex["image"].shape[:2] == ex["mask"].shape


# --------------------------------------------------------------------------- folder: good inputs


def test_find_pairs_sorted_and_ignores_hidden_and_other_files(tmp_path):
    root = _make_folder(tmp_path / "ds", stems=("b10", "a", "b2"))
    (root / "images" / ".DS_Store").write_bytes(b"junk")
    (root / "masks" / "._a.png").write_bytes(b"junk")
    (root / "images" / "notes.txt").write_text("hi")
    pairs = find_pairs(root)
    assert [p[0].stem for p in pairs] == ["a", "b10", "b2"]
    assert all(i.parent == root / "images" and m.parent == root / "masks" for i, m in pairs)


def test_folder_source_item_values(tmp_path):
    root = _make_folder(tmp_path / "ds", stems=("x", "y"), h=20, w=30)
    src = FolderSource(root)
    assert len(src) == 2 and src.root == root
    ex = src[1]
    assert ex["name"] == "y"
    np.testing.assert_array_equal(ex["image"], np.asarray(Image.open(root / "images" / "y.png")))
    assert ex["mask"].shape == (20, 30) and ex["mask"][10, 15] == 255 and ex["mask"][0, 0] == 0
    with pytest.raises(IndexError):
        src[2]


@pytest.mark.parametrize(
    "layout",
    [("DUTS-TR-Image", "DUTS-TR-Mask"), ("DUTS-TE-Image", "DUTS-TE-Mask"), ("images", "ground_truth_mask")],
)
def test_official_layouts_are_detected(tmp_path, layout):
    root = tmp_path / "ds"
    (root / layout[0]).mkdir(parents=True)
    (root / layout[1]).mkdir()
    _write_rgb(root / layout[0] / "s1.jpg", 8, 9)
    _write_mask(root / layout[1] / "s1.png", 8, 9)
    assert find_pairs(root) == [(root / layout[0] / "s1.jpg", root / layout[1] / "s1.png")]


def test_all_zero_and_all_255_masks_work(tmp_path):
    root = _make_folder(tmp_path / "ds", stems=("empty", "full"))
    _write_mask(root / "masks" / "empty.png", 20, 30, value=0)
    _write_mask(root / "masks" / "full.png", 20, 30, value=255)
    src = FolderSource(root)
    assert (src[0]["mask"] == 0).all()
    assert (src[1]["mask"] == 255).all()


def test_load_mask_binarises_at_128_and_converts_modes(tmp_path):
    grey = np.array([[0, 127, 128, 255]], np.uint8)
    Image.fromarray(grey).save(tmp_path / "l.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "l.png"), [[0, 0, 255, 255]])
    # RGBA: luminance counts, not alpha.
    rgba = np.zeros((1, 2, 4), np.uint8)
    rgba[0, 0] = (255, 255, 255, 0)
    rgba[0, 1] = (0, 0, 0, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "rgba.png"), [[255, 0]])
    # RGB mask.
    Image.fromarray(np.array([[[255, 255, 255], [10, 10, 10]]], np.uint8)).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "rgb.png"), [[255, 0]])
    # 16-bit mask: 40000/65535 -> 156 (on), 30000/65535 -> 117 (off).
    Image.fromarray(np.array([[40000, 30000, 65535]], np.uint16)).save(tmp_path / "m16.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "m16.png"), [[255, 0, 255]])
    assert load_mask(tmp_path / "m16.png").dtype == np.uint8


def test_load_image_converts_modes(tmp_path):
    rgba = np.random.default_rng(0).integers(0, 256, (5, 6, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_image(tmp_path / "a.png"), rgba[..., :3])
    pal = Image.fromarray(rgba[..., :3]).convert("P")
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(load_image(tmp_path / "p.png"), np.asarray(pal.convert("RGB")))
    Image.fromarray(rgba[..., :3]).convert("CMYK").save(tmp_path / "c.jpg")
    assert load_image(tmp_path / "c.jpg").shape == (5, 6, 3)
    Image.fromarray(np.array([[0, 65535]], np.uint16)).save(tmp_path / "g16.png")
    np.testing.assert_array_equal(load_image(tmp_path / "g16.png"), [[[0, 0, 0], [255, 255, 255]]])


# --------------------------------------------------------------------------- folder: errors


def test_corrupt_image_raises_data_error(tmp_path):
    root = _make_folder(tmp_path / "ds", stems=("a", "bad"))
    (root / "images" / "bad.png").unlink()
    bad = root / "images" / "bad.jpg"
    bad.write_bytes(b"this is not a jpeg at all" * 10)
    src = FolderSource(root)
    src[0]
    with pytest.raises(DataError) as ei:
        src[1]
    assert "cannot read image" in one_line_message(ei, bad)
    with pytest.raises(DataError) as ei:
        load_image(bad)
    one_line_message(ei, bad)


def test_truncated_image_and_corrupt_mask_raise_data_error(tmp_path):
    good = tmp_path / "good.jpg"
    _write_rgb(good, 40, 40)
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(good.read_bytes()[:200])
    with pytest.raises(DataError) as ei:
        load_image(trunc)
    one_line_message(ei, trunc)
    bad_mask = tmp_path / "m.png"
    bad_mask.write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError) as ei:
        load_mask(bad_mask)
    assert "cannot read mask" in one_line_message(ei, bad_mask)


def test_image_over_the_decompression_bomb_limit_raises_data_error(tmp_path, monkeypatch):
    root = _make_folder(tmp_path / "ds", stems=("a",), h=20, w=30)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)  # 600 pixels: over twice the limit, Pillow raises
    for read, path in (
        (FolderSource(root).verify, root / "images" / "a.png"),
        (lambda: load_mask(root / "masks" / "a.png"), root / "masks" / "a.png"),
        (lambda: load_image(root / "images" / "a.png"), root / "images" / "a.png"),
    ):
        with pytest.raises(DataError) as ei:
            read()
        assert "decompression bomb" in one_line_message(ei, path)


def test_mask_of_another_size_raises(tmp_path):
    root = _make_folder(tmp_path / "ds", stems=("a",), h=20, w=30)
    _write_mask(root / "masks" / "a.png", 21, 30)
    with pytest.raises(DataError) as ei:
        FolderSource(root)[0]
    msg = one_line_message(ei, root / "masks" / "a.png", root / "images" / "a.png")
    assert "30x21" in msg and "30x20" in msg


def test_image_without_mask_raises(tmp_path):
    root = _make_folder(tmp_path / "ds", stems=("a", "b"))
    (root / "masks" / "b.png").unlink()
    with pytest.raises(DataError) as ei:
        find_pairs(root)
    one_line_message(ei, root / "images" / "b.png", root / "masks")


def test_mask_without_image_raises(tmp_path):
    root = _make_folder(tmp_path / "ds", stems=("a", "b"))
    (root / "images" / "b.png").unlink()
    with pytest.raises(DataError) as ei:
        FolderSource(root)
    one_line_message(ei, root / "masks" / "b.png", root / "images")


def test_empty_images_folder_raises(tmp_path):
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    with pytest.raises(DataError) as ei:
        find_pairs(root)
    assert "no images" in one_line_message(ei, root / "images")


def test_missing_folders_raise(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError) as ei:
        FolderSource(missing)
    assert "not found" in one_line_message(ei, missing)
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    with pytest.raises(DataError) as ei:
        find_pairs(root)
    one_line_message(ei, root / "masks")


def test_duplicate_stems_raise(tmp_path):
    root = _make_folder(tmp_path / "ds", stems=("a",))
    _write_rgb(root / "images" / "a.jpg", 20, 30)
    with pytest.raises(DataError) as ei:
        find_pairs(root)
    one_line_message(ei, root / "images")


# --------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_per_seed_and_index():
    a, b = SyntheticSource(50, 64, seed=3), SyntheticSource(1000, 64, seed=3)
    for i in (0, 7, 42):
        x, y = a[i], b[i]
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["mask"], y["mask"])
        assert x["name"] == y["name"] == f"synthetic_{i:06d}"
    # Order of access does not matter.
    first = a[7]["image"].copy()
    a[3], a[9]
    np.testing.assert_array_equal(a[7]["image"], first)
    other = SyntheticSource(50, 64, seed=4)
    assert not np.array_equal(other[7]["image"], first)
    assert not np.array_equal(a[8]["image"], first)
    with pytest.raises(IndexError):
        a[50]


@pytest.fixture(scope="module")
def synthetic_sample():
    src = SyntheticSource(60, 64, seed=0)
    return [src[i] for i in range(60)]


def test_synthetic_format_and_salient_fractions(synthetic_sample):
    fracs = []
    for ex in synthetic_sample:
        assert ex["image"].shape == (64, 64, 3) and ex["image"].dtype == np.uint8
        assert ex["mask"].shape == (64, 64) and ex["mask"].dtype == np.uint8
        assert set(np.unique(ex["mask"])) <= {0, 255}
        fracs.append((ex["mask"] == 255).mean())
    fracs = np.array(fracs)
    assert fracs.min() >= 0.01 and fracs.max() <= 0.7
    assert fracs.std() > 0.05  # sizes vary
    assert (fracs < 0.12).any() and (fracs > 0.25).any()


def test_synthetic_objects_sometimes_touch_the_border(synthetic_sample):
    touching = 0
    for ex in synthetic_sample[:50]:
        m = ex["mask"] == 255
        touching += bool(m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())
    assert 5 <= touching <= 45


def test_synthetic_foreground_differs_from_background(synthetic_sample):
    dists, fg_means = [], []
    for ex in synthetic_sample:
        img = ex["image"].astype(np.float64)
        m = ex["mask"] == 255
        fg, bg = img[m].mean(0), img[~m].mean(0)
        dists.append(np.linalg.norm(fg - bg))
        fg_means.append(fg)
    dists = np.array(dists)
    assert np.median(dists) > 40
    assert (dists > 25).mean() > 0.8
    # No single colour threshold: the foreground colours themselves vary a lot.
    assert np.array(fg_means).std(axis=0).min() > 30


def test_synthetic_images_are_not_flat(synthetic_sample):
    # Backgrounds are textured / noisy, not constant.
    for ex in synthetic_sample[:10]:
        bg = ex["image"][ex["mask"] == 0].astype(np.float64)
        assert bg.std(axis=0).max() > 3


# --------------------------------------------------------------------------- pipeline: indices / splits


def test_batch_indices_sequential_wraps_around():
    np.testing.assert_array_equal(batch_indices(0, 4, 10, 0, False), [0, 1, 2, 3])
    np.testing.assert_array_equal(batch_indices(2, 4, 10, 0, False), [8, 9, 0, 1])
    np.testing.assert_array_equal(batch_indices(5, 4, 10, 123, False), [0, 1, 2, 3])
    np.testing.assert_array_equal(batch_indices(1, 7, 3, 0, False), [1, 2, 0, 1, 2, 0, 1])


def test_batch_indices_shuffled_epochs_are_permutations():
    n, bs = 12, 4
    flat = np.concatenate([batch_indices(s, bs, n, 5, True) for s in range(3 * n // bs)])
    epochs = flat.reshape(3, n)
    for e in epochs:
        assert sorted(e) == list(range(n))
    assert not np.array_equal(epochs[0], epochs[1])
    assert not np.array_equal(epochs[0], np.arange(n))
    # Batches straddling an epoch boundary agree with the per-epoch permutations.
    straddle = np.concatenate([batch_indices(s, 5, n, 5, True) for s in range(36 // 5 + 1)])
    np.testing.assert_array_equal(straddle[:36], flat)
    # Pure function of the arguments; the seed matters.
    np.testing.assert_array_equal(batch_indices(4, bs, n, 5, True), batch_indices(4, bs, n, 5, True))
    assert not np.array_equal(np.concatenate([batch_indices(s, bs, n, 6, True) for s in range(3)]), epochs[0])


def test_split_is_deterministic_and_disjoint():
    src = ListSource(30)
    train, val = split(src, 7, seed=1)
    assert isinstance(train, Subset) and len(train) == 23 and len(val) == 7
    t_idx, v_idx = set(train.indices.tolist()), set(val.indices.tolist())
    assert not t_idx & v_idx and t_idx | v_idx == set(range(30))
    train2, val2 = split(src, 7, seed=1)
    np.testing.assert_array_equal(val.indices, val2.indices)
    _, val3 = split(src, 7, seed=2)
    assert set(val3.indices.tolist()) != v_idx
    assert val[0]["name"] == f"ex{val.indices[0]}"
    with pytest.raises(ValueError):
        split(src, 30)


# --------------------------------------------------------------------------- pipeline: resize / augment


def test_resize_pair_shapes_and_values():
    img = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    mask = np.zeros((30, 50), np.uint8)
    mask[:, 25:] = 255
    out_img, out_mask = resize_pair(img, mask, 16)
    assert out_img.shape == (16, 16, 3) and out_img.dtype == np.uint8
    assert out_mask.shape == (16, 16) and out_mask.dtype == np.uint8
    assert set(np.unique(out_mask)) == {0, 1}
    assert (out_mask[:, :7] == 0).all() and (out_mask[:, 9:] == 1).all()
    expected = np.asarray(Image.fromarray(img).resize((16, 16), Image.BILINEAR))
    np.testing.assert_array_equal(out_img, expected)
    # Soft values produced by the bilinear resize are thresholded at 128.
    noisy = np.where(np.random.default_rng(1).random((30, 50)) < 0.5, 255, 0).astype(np.uint8)
    soft = np.asarray(Image.fromarray(noisy).resize((16, 16), Image.BILINEAR))
    assert ((soft > 0) & (soft < 128)).any() and ((soft >= 128) & (soft < 255)).any()
    np.testing.assert_array_equal(resize_pair(img, noisy, 16)[1], (soft >= 128).astype(np.uint8))


def _column_image(w: int, h: int = 40):
    cols = np.arange(w, dtype=np.uint8)
    img = np.broadcast_to(cols[None, :, None], (h, w, 3)).copy()
    mask = np.zeros((h, w), np.uint8)
    mask[:, : w // 2] = 255  # left half is foreground
    return img, mask


def test_augment_crop_ratio_and_flip():
    w = 200
    img, mask = _column_image(w, h=200)
    spans, flips = [], 0
    for k in range(60):
        out, out_mask = augment(img, mask, 200, np.random.default_rng([9, k]))
        row = out[100, :, 0].astype(int)
        spans.append(abs(row[-1] - row[0]) + 1)
        flipped = row[0] > row[-1]
        flips += flipped
        # The mask moves with the image: foreground sits where the source columns were < w/2.
        fg = out_mask[100] == 1
        assert (row[fg] < w // 2 + 1).all() and (row[~fg] >= w // 2 - 1).all()
    spans = np.array(spans)
    assert spans.min() >= 0.9 * w - 2 and spans.max() <= w
    assert spans.min() < 0.93 * w and spans.max() > 0.97 * w  # the whole ratio range is used
    assert 15 <= flips <= 45


def test_augment_crop_min_and_determinism():
    img, mask = _column_image(200, h=50)
    spans = []
    for k in range(40):
        out, _ = augment(img, mask, 100, np.random.default_rng(k), crop_min=0.5)
        spans.append(abs(int(out[0, -1, 0]) - int(out[0, 0, 0])) + 1)
    assert min(spans) < 0.7 * 200 and min(spans) >= 0.5 * 200 - 4
    a = augment(img, mask, 64, np.random.default_rng(3))
    b = augment(img, mask, 64, np.random.default_rng(3))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


# --------------------------------------------------------------------------- pipeline: batches


@pytest.fixture(scope="module")
def synth_source():
    return SyntheticSource(20, 48, seed=0)


def test_make_batch_shapes_and_determinism(synth_source):
    kw = dict(batch_size=4, size=32, seed=11)
    b1 = make_batch(synth_source, 3, **kw)
    b2 = make_batch(synth_source, 3, **kw)
    assert b1["image"].shape == (4, 32, 32, 3) and b1["image"].dtype == np.uint8
    assert b1["mask"].shape == (4, 32, 32) and b1["mask"].dtype == np.uint8
    assert set(np.unique(b1["mask"])) == {0, 1}
    np.testing.assert_array_equal(b1["image"], b2["image"])
    np.testing.assert_array_equal(b1["mask"], b2["mask"])
    b3 = make_batch(synth_source, 4, **kw)
    assert not np.array_equal(b1["image"], b3["image"])
    b4 = make_batch(synth_source, 3, **{**kw, "seed": 12})
    assert not np.array_equal(b1["image"], b4["image"])


def test_make_batch_without_augmentation_is_resize_of_indexed_examples(synth_source):
    b = make_batch(synth_source, 6, batch_size=4, size=24, seed=0, shuffle=False, augment=False)
    idx = batch_indices(6, 4, len(synth_source), 0, False)
    for j, k in enumerate(idx):
        ex = synth_source[int(k)]
        img, mask = resize_pair(ex["image"], ex["mask"], 24)
        np.testing.assert_array_equal(b["image"][j], img)
        np.testing.assert_array_equal(b["mask"][j], mask)


def test_make_batch_uses_per_example_rng(synth_source):
    b = make_batch(synth_source, 2, batch_size=3, size=32, seed=7, shuffle=True)
    idx = batch_indices(2, 3, len(synth_source), 7, True)
    ex = synth_source[int(idx[1])]
    img, mask = augment(ex["image"], ex["mask"], 32, np.random.default_rng([7, pipeline.AUGMENT_STREAM, 2, 1]))
    np.testing.assert_array_equal(b["image"][1], img)
    np.testing.assert_array_equal(b["mask"][1], mask)


def test_batch_loader_matches_make_batch(synth_source):
    kw = dict(batch_size=3, size=32, seed=5, shuffle=True, augment=True)
    with BatchLoader(synth_source, 10, 6, workers=2, prefetch=3, **kw) as loader:
        got = list(loader)
    assert [s for s, _ in got] == list(range(10, 16))
    for step, batch in got:
        ref = make_batch(synth_source, step, **kw)
        np.testing.assert_array_equal(batch["image"], ref["image"])
        np.testing.assert_array_equal(batch["mask"], ref["mask"])


def test_batch_loader_propagates_data_error():
    src = FailingSource(10, bad=7)
    loader = BatchLoader(src, 0, 5, batch_size=2, size=8, seed=0, shuffle=False, augment=False)
    steps = []
    with pytest.raises(DataError, match="bad_7"):
        for step, _ in loader:
            steps.append(step)
    assert steps == [0, 1, 2]  # step 3 holds example 7
    assert loader._executor._shutdown
    assert list(loader) == []


def test_batch_loader_closes_cleanly_when_abandoned():
    before = len(_loader_threads())
    src = ListSource(50)
    loader = BatchLoader(src, 0, 1000, batch_size=4, size=8, seed=0, shuffle=True, augment=True)
    step, batch = next(loader)
    assert step == 0 and batch["image"].shape == (4, 8, 8, 3)
    t = time.perf_counter()
    loader.close()
    loader.close()  # idempotent
    assert time.perf_counter() - t < 5
    assert len(_loader_threads()) == before
    with pytest.raises(StopIteration):
        next(loader)
    # Abandoning a loader in a `with` block early also stops its threads.
    with BatchLoader(src, 0, 1000, batch_size=4, size=8, seed=0, shuffle=True, augment=True) as ld:
        for step, _ in ld:
            if step == 2:
                break
    assert len(_loader_threads()) == before
    # ... and so does dropping the last reference.
    ld = BatchLoader(src, 0, 1000, batch_size=4, size=8, seed=0, shuffle=True, augment=True)
    next(ld)
    del ld
    gc.collect()
    deadline = time.time() + 5
    while len(_loader_threads()) > before and time.time() < deadline:
        time.sleep(0.01)
    assert len(_loader_threads()) == before


def test_batch_loader_prefetch_is_bounded():
    calls = []

    class Counting(ListSource):
        def __getitem__(self, i):
            calls.append(i)
            return super().__getitem__(i)

    src = Counting(100)
    with BatchLoader(
        src, 0, 50, batch_size=1, size=8, seed=0, shuffle=False, augment=False, workers=2, prefetch=3
    ) as loader:
        next(loader)
        time.sleep(0.2)
        assert len(calls) <= 1 + 3  # consumed one, at most `prefetch` in flight


def test_eval_batches_pad_and_cover_every_example_once():
    src = ListSource(10)
    batches = list(eval_batches(src, batch_size=4, size=8))
    assert len(batches) == 3
    seen = []
    for b in batches:
        assert b["image"].shape == (4, 8, 8, 3) and b["mask"].shape == (4, 8, 8)
        assert b["valid"].dtype == bool and b["valid"].shape == (4,)
        seen += [int(v) for v in b["image"][b["valid"], 0, 0, 0]]
    assert seen == list(range(10))
    np.testing.assert_array_equal(batches[-1]["valid"], [True, True, False, False])
    last = batches[-1]
    np.testing.assert_array_equal(last["image"][2], last["image"][1])
    np.testing.assert_array_equal(last["mask"][3], last["mask"][1])
    ref = resize_pair(src[9]["image"], src[9]["mask"], 8)
    np.testing.assert_array_equal(last["mask"][1], ref[1])
    exact = list(eval_batches(ListSource(8), batch_size=4, size=8))
    assert len(exact) == 2 and all(b["valid"].all() for b in exact)


def test_cached_source_gives_the_same_batches_and_pre_resizes():
    src = ListSource(9, h=40, w=60)
    cached = menet_datasets.CachedSource(src, workers=2)
    assert len(cached) == 9 and cached.names == [f"ex{i}" for i in range(9)]
    assert cached.nbytes == 9 * (40 * 60 * 3 + 40 * 60)
    kw = dict(batch_size=4, size=16, seed=2, shuffle=True, augment=True)
    for step in (0, 3):
        a, b = make_batch(cached, step, **kw), make_batch(src, step, **kw)
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["mask"], b["mask"])
    small = menet_datasets.CachedSource(src, max_side=30)
    ex = small[5]
    assert ex["image"].shape == (20, 30, 3) and ex["mask"].shape == (20, 30) and ex["name"] == "ex5"
    assert set(np.unique(ex["mask"])) <= {0, 255} and (ex["image"] == 5).all()
    # Example 5's foreground is its first 6 of 60 columns: 3 of 30 after halving.
    assert (ex["mask"][:, :3] == 255).all() and (ex["mask"][:, 4:] == 0).all()


def test_a_mask_stored_as_0_and_1_is_a_binary_mask(tmp_path):
    """A 0/1 mask (as numpy code saves them) was read as all background, so a perfect map scored F-beta 0 with no
    warning; its 1 is foreground, with a warning. Any other mask keeps the >= 128 rule."""
    from menet_datasets import load_mask

    mask = np.zeros((6, 8), np.uint8)
    mask[2:4, 3:6] = 1
    Image.fromarray(mask).save(tmp_path / "zero_one.png")
    with pytest.warns(UserWarning, match="0 and 1 only are read as binary masks"):
        loaded = load_mask(tmp_path / "zero_one.png")
    np.testing.assert_array_equal(loaded, mask * 255)
    soft = np.where(mask == 1, 200, 100).astype(np.uint8)  # a soft mask: thresholded at 128 as before
    Image.fromarray(soft).save(tmp_path / "soft.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "soft.png"), mask * 255)
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(tmp_path / "empty.png")
    assert not load_mask(tmp_path / "empty.png").any()  # an empty mask stays empty
