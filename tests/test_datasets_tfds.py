"""TFDS builders and the prepared-dataset source: real ECSSD / DUTS pairs, generated real-world files, bad inputs,
splits, and the input pipeline over a prepared dataset (same batches as the folder, also after a resume)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from helpers import one_line_message
from PIL import Image

import menet_datasets
from menet_datasets import BatchLoader, DataError, FolderSource, make_batch
from menet_datasets.builders import BUILDERS, seeded_split
from menet_datasets.folder import load_mask_grey
from menet_datasets.tfds_source import TFDSSource, load_source, prepared_builder

tfds = pytest.importorskip("tensorflow_datasets")
tfds.disable_progress_bar()

ECSSD_STEMS = [f"{i:04d}" for i in range(550, 568)]  # 18 pairs, 0557 is a greyscale JPEG


def _link_subset(src_root: Path, dst: Path, stems, image_dir="images", mask_dir="masks") -> Path:
    (dst / image_dir).mkdir(parents=True)
    (dst / mask_dir).mkdir(parents=True)
    for stem in stems:
        os.symlink(src_root / "images" / f"{stem}.jpg", dst / image_dir / f"{stem}.jpg")
        os.symlink(src_root / "masks" / f"{stem}.png", dst / mask_dir / f"{stem}.png")
    return dst


def _build(name, manual, tmp_path, **kwargs):
    return prepared_builder(name, data_dir=tmp_path / "tfds", manual_dir=manual, **kwargs)


def _assert_same_examples(prepared, folder):
    assert len(prepared) == len(folder) and prepared.names == folder.names
    for i in range(len(folder)):
        a, b = prepared[i], folder[i]
        assert a["name"] == b["name"]
        assert a["image"].dtype == np.uint8 and a["image"].shape == b["image"].shape
        np.testing.assert_array_equal(a["image"], b["image"], err_msg=b["name"])
        np.testing.assert_array_equal(a["mask"], b["mask"], err_msg=b["name"])


# ----------------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def ecssd(shared_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ecssd")
    manual = _link_subset(shared_data / "ECSSD", tmp / "ECSSD", ECSSD_STEMS)
    builder = _build("ecssd", manual, tmp)
    return builder, manual, tmp


def test_ecssd_counts_shapes_masks_and_alignment(ecssd):
    builder, manual, tmp = ecssd
    assert list(builder.info.splits) == ["test"] and builder.info.splits["test"].num_examples == len(ECSSD_STEMS)
    source = load_source("ecssd", split="test", data_dir=tmp / "tfds")  # prepared: no manual dir needed
    assert source.names == ECSSD_STEMS
    _assert_same_examples(source, FolderSource(manual))
    for i in range(len(source)):
        ex = source[i]
        assert ex["image"].ndim == 3 and ex["image"].shape[2] == 3 and ex["mask"].shape == ex["image"].shape[:2]
        assert set(np.unique(ex["mask"])) <= {0, 255} and (ex["mask"] == 255).any()
        # Aligned with the original mask file, pixel for pixel.
        np.testing.assert_array_equal(ex["mask"] >= 128, load_mask_grey(manual / "masks" / f"{ex['name']}.png") >= 128)
    # Readable by name through TFDS itself, without TensorFlow; the mask feature is H x W x 1.
    ds = tfds.data_source("ecssd", split="test", data_dir=str(tmp / "tfds"))
    assert len(ds) == len(ECSSD_STEMS) and ds[3]["mask"].shape == source[3]["mask"].shape + (1,)
    assert ds[3]["name"].decode() == ECSSD_STEMS[3]


def test_ecssd_keeps_jpeg_bytes_and_stores_greyscale_losslessly(ecssd):
    builder, manual, tmp = ecssd
    meta = builder.info.metadata
    assert meta["image_formats"] == {"JPEG": len(ECSSD_STEMS)} and meta["stored_as_png"] == 1  # 0557 only
    raw = builder.as_data_source(split="test", decoders={"image": tfds.decode.SkipDecoding()})
    i_grey, i_colour = ECSSD_STEMS.index("0557"), ECSSD_STEMS.index("0550")
    assert raw[i_colour]["image"] == (manual / "images" / "0550.jpg").read_bytes()
    assert raw[i_grey]["image"].startswith(b"\x89PNG")
    grey = TFDSSource(builder, "test")[i_grey]["image"]
    assert grey.shape[2] == 3 and (grey[..., 0] == grey[..., 2]).all()
    np.testing.assert_array_equal(grey[..., 0], np.asarray(Image.open(manual / "images" / "0557.jpg")))


def test_duts_soft_masks_kept_and_binarised(shared_data, tmp_path):
    root = shared_data / "DUTS-TR-subset"
    stems = sorted(p.stem for p in (root / "images").iterdir())[:12]
    manual = _link_subset(root, tmp_path / "duts", stems)
    builder = _build("duts", manual, tmp_path)
    assert dict(builder.info.splits)["train"].num_examples == 12 and "test" not in builder.info.splits
    source = TFDSSource(builder, "train")
    _assert_same_examples(source, FolderSource(manual))
    soft_seen = False
    for i, stem in enumerate(stems):
        ex = source[i]
        original = load_mask_grey(manual / "masks" / f"{stem}.png")
        np.testing.assert_array_equal(ex["mask_soft"], original)
        np.testing.assert_array_equal(ex["mask"], np.where(original >= 128, 255, 0))
        soft_seen |= bool(((original > 0) & (original < 255)).any())
    assert soft_seen and builder.info.metadata["non_binary_masks"] > 0


# ------------------------------------------------------------------------------------ generated real-world files


def _rgb(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _box_mask(h, w, soft=False):
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 255
    if soft:
        mask[h // 4, w // 4 : 3 * w // 4] = 100  # an anti-aliased edge below 128
        mask[3 * h // 4 - 1, w // 4 : 3 * w // 4] = 200
    return mask


def _exif_jpeg(path, array, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(array).save(path, quality=95, exif=exif)


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory):
    """One pair per real-world case; the masks are (H, W) = (24, 32) unless said otherwise."""
    root = tmp_path_factory.mktemp("odd") / "folder"
    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    h, w = 24, 32
    Image.fromarray(_rgb(h, w, 0)[..., 0]).save(images / "grey.jpg")
    Image.fromarray(np.dstack([_rgb(h, w, 1), np.full((h, w), 7, np.uint8)]), "RGBA").save(images / "rgba.png")
    Image.fromarray((np.arange(h * w, dtype=np.uint16).reshape(h, w) * 80)).save(images / "deep16.png")
    Image.fromarray(_rgb(h, w, 2)).convert("P").save(images / "palette.png")
    Image.fromarray(_rgb(h, w, 3)).convert("CMYK").save(images / "cmyk.jpg")
    _exif_jpeg(images / "exif_rotate.jpg", _rgb(w, h, 4), 6)  # stored 32 x 24 (H x W), shown rotated
    _exif_jpeg(images / "exif_keep.jpg", _rgb(h, w, 5), 6)  # mask drawn over the stored pixels
    Image.fromarray(_rgb(h, w, 6)).save(images / "plain.jpg", quality=90)
    for stem in ("grey", "rgba", "deep16", "palette", "cmyk", "exif_rotate", "exif_keep"):
        Image.fromarray(_box_mask(h, w)).save(masks / f"{stem}.png")
    Image.fromarray(_box_mask(h, w, soft=True)).save(masks / "plain.png")
    # A class-coloured palette mask: index 1 is dark red (luminance 38), i.e. foreground.
    pal = Image.fromarray((_box_mask(h, w) // 255).astype(np.uint8), "P")
    pal.putpalette([0, 0, 0, 128, 0, 0] + [0, 0, 0] * 254)
    pal.save(masks / "rgba.png")
    (images / "notes.txt").write_text("not an image")
    (masks / "Thumbs.db").write_bytes(b"junk")
    return root


def test_real_world_files_build_as_the_folder_reads_them(odd_folder, tmp_path):
    builder = _build("salient_folder", odd_folder, tmp_path)
    source = TFDSSource(builder, "test")
    folder = FolderSource(odd_folder)
    _assert_same_examples(source, folder)
    by_name = {source.names[i]: source[i] for i in range(len(source))}
    assert {ex["image"].shape for ex in by_name.values()} == {(24, 32, 3)}
    # EXIF orientation 6 with a mask of the rotated size: rotated (90 degrees clockwise); else raw pixels kept.
    stored = np.asarray(Image.open(odd_folder / "images" / "exif_rotate.jpg"))
    np.testing.assert_array_equal(by_name["exif_rotate"]["image"], np.rot90(stored, k=-1))
    np.testing.assert_array_equal(
        by_name["exif_keep"]["image"], np.asarray(Image.open(odd_folder / "images" / "exif_keep.jpg"))
    )
    # 16-bit: scaled, not clipped; RGBA: alpha dropped; palette mask with a dark-red class colour: foreground.
    deep = by_name["deep16"]["image"][..., 0].astype(int)
    assert deep.max() > 200 and len(np.unique(deep)) > 100
    assert (by_name["rgba"]["mask"] == np.where(_box_mask(24, 32) > 0, 255, 0)).all()
    soft = by_name["plain"]
    assert set(np.unique(soft["mask_soft"])) == {0, 100, 200, 255}
    assert (soft["mask"][6, 8:24] == 0).all() and (soft["mask"][17, 8:24] == 255).all()
    meta = builder.info.metadata
    assert meta["exif_rotated"] == 1 and meta["stored_as_png"] == 6  # all but plain.jpg and exif_keep.jpg
    assert meta["image_formats"] == {"JPEG": 5, "PNG": 3}
    assert sorted(Path(p).name for p in meta["ignored"]) == ["Thumbs.db", "notes.txt"]
    assert meta["skipped"] == []


@pytest.mark.parametrize("case", ["corrupt", "truncated", "size", "orphan_image", "orphan_mask"])
def test_bad_inputs_stop_the_build_with_the_file_named(case, tmp_path):
    root = tmp_path / "folder"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for k, stem in enumerate(("a", "b", "c")):
        Image.fromarray(_rgb(20, 30, k)).save(root / "images" / f"{stem}.jpg")
        Image.fromarray(_box_mask(20, 30)).save(root / "masks" / f"{stem}.png")
    if case == "corrupt":
        bad = root / "images" / "b.jpg"
        bad.write_bytes(b"not a jpeg" * 20)
    elif case == "truncated":
        bad = root / "masks" / "b.png"
        bad.write_bytes(bad.read_bytes()[:60])
    elif case == "size":
        bad = root / "masks" / "b.png"
        Image.fromarray(_box_mask(21, 30)).save(bad)
    elif case == "orphan_image":
        bad = root / "images" / "d.jpg"
        Image.fromarray(_rgb(20, 30, 9)).save(bad)
    else:
        bad = root / "masks" / "d.png"
        Image.fromarray(_box_mask(20, 30)).save(bad)
    with pytest.raises(DataError) as excinfo:
        _build("salient_folder", root, tmp_path)
    one_line_message(excinfo, bad)
    builder = BUILDERS["salient_folder"](data_dir=str(tmp_path / "tfds"))
    assert not builder.is_prepared()  # nothing half-built left behind
    # Skip-and-report: the other pairs build, the bad one is listed in the metadata.
    builder = _build("salient_folder", root, tmp_path, skip_bad=True)
    expected = 2 if case in ("corrupt", "truncated", "size") else 3
    assert builder.info.splits["test"].num_examples == expected
    skipped = builder.info.metadata["skipped"]
    assert len(skipped) == 1 and str(bad) in skipped[0]
    assert ("b" in TFDSSource(builder, "test").names) == (expected == 3)


# -------------------------------------------------------------------------------------------------- splits


def _write_pairs(image_dir: Path, mask_dir: Path, stems, image_ext=".jpg"):
    image_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    for k, stem in enumerate(stems):
        Image.fromarray(_rgb(8, 10, k)).save(image_dir / f"{stem}{image_ext}")
        Image.fromarray(_box_mask(8, 10)).save(mask_dir / f"{stem}.png")


def test_seeded_split_is_deterministic_and_documented():
    pairs = [(f"i{k}", f"m{k}") for k in range(40)]
    cut = seeded_split(pairs, {"validation": 2, "test": 4, "train": None})
    assert [len(cut[s]) for s in ("validation", "test", "train")] == [2, 4, 34]
    assert sorted(sum(cut.values(), [])) == sorted(pairs)
    perm = np.random.default_rng(0).permutation(40)
    assert cut["validation"] == [pairs[i] for i in sorted(perm[:2])]
    assert cut["test"] == [pairs[i] for i in sorted(perm[2:6])]
    assert seeded_split(pairs, {"validation": 2, "test": 4, "train": None}) == cut


def test_msra10k_side_by_side_layout_and_splits(tmp_path):
    stems = [str(k) for k in range(40)]
    manual = tmp_path / "downloads"  # MSRA10K_Imgs_GT.zip extracted here: its top folder is found
    release = manual / "MSRA10K_Imgs_GT"
    _write_pairs(release / "Imgs", release / "Imgs", stems)
    (release / "Readme.txt").write_text("MSRA10K")
    builder = _build("msra10k", manual, tmp_path / "a")
    counts = {s: builder.info.splits[s].num_examples for s in builder.info.splits}
    assert counts == {"train": 34, "validation": 2, "test": 4}  # 85 / 5 / 10 %
    names = {s: TFDSSource(builder, s).names for s in counts}
    assert sorted(sum(names.values(), [])) == sorted(stems)
    # With the MSRA1K list, those images are the test split and the rest is cut 8500 : 500.
    (release / "msra1000.txt").write_text("3\n17\n25\n")
    builder = _build("msra10k", manual, tmp_path / "b")
    assert TFDSSource(builder, "test").names == ["17", "25", "3"]
    assert builder.info.splits["validation"].num_examples == 2 and builder.info.splits["train"].num_examples == 35


def test_hku_is_lists_and_seeded_80_5_15(tmp_path):
    import scipy.io

    stems = [f"{k:04d}" for k in range(40)]
    manual = tmp_path / "HKU-IS"
    _write_pairs(manual / "imgs", manual / "gt", stems, image_ext=".png")
    builder = _build("hku_is", manual, tmp_path / "a")
    assert {s: builder.info.splits[s].num_examples for s in builder.info.splits} == {
        "train": 32,
        "validation": 2,
        "test": 6,
    }
    # The release's testImgSet.mat (a cell array of file names) fixes the test split; the rest is cut 80 : 5.
    listed = np.array([[f"{s}.png"] for s in stems[:10]], dtype=object)
    scipy.io.savemat(manual / "testImgSet.mat", {"testImgSet": listed})
    builder = _build("hku_is", manual, tmp_path / "b")
    assert TFDSSource(builder, "test").names == stems[:10]
    assert builder.info.splits["validation"].num_examples == 2 and builder.info.splits["train"].num_examples == 28
    (manual / "validation.txt").write_text("0001\nnope\n")
    with pytest.raises(DataError) as excinfo:
        _build("hku_is", manual, tmp_path / "c")
    assert "'nope'" in one_line_message(excinfo, manual / "validation.txt")


def test_duts_official_layout_has_train_and_test(tmp_path):
    manual = tmp_path / "DUTS"
    _write_pairs(manual / "DUTS-TR" / "DUTS-TR-Image", manual / "DUTS-TR" / "DUTS-TR-Mask", ["t1", "t2", "t3"])
    _write_pairs(manual / "DUTS-TE" / "DUTS-TE-Image", manual / "DUTS-TE" / "DUTS-TE-Mask", ["e1", "e2"])
    builder = _build("duts", manual, tmp_path)
    assert TFDSSource(builder, "train").names == ["t1", "t2", "t3"]
    assert TFDSSource(builder, "test").names == ["e1", "e2"]


@pytest.mark.parametrize(
    "layout",
    [
        ("imgs", "gt"),
        ("DUT-OMRON-image", "pixelwiseGT-new-PNG"),
        ("images", "ground_truth_mask"),
        ("imgs/pascal", "masks/pascal"),
    ],
)
def test_release_layouts_are_read(layout, tmp_path):
    _write_pairs(tmp_path / "d" / layout[0], tmp_path / "d" / layout[1], ["x", "y"])
    assert FolderSource(tmp_path / "d").pairs == [
        (tmp_path / "d" / layout[0] / f"{s}.jpg", tmp_path / "d" / layout[1] / f"{s}.png") for s in "xy"
    ]


def test_every_builder_says_where_to_download_and_which_layouts():
    assert set(BUILDERS) == {
        "ecssd",
        "dut_omron",
        "hku_is",
        "msra10k",
        "msra1000",
        "sod",
        "duts",
        "pascal_s",
        "salient_folder",
    }
    for name, cls in BUILDERS.items():
        text = cls.MANUAL_DOWNLOAD_INSTRUCTIONS
        assert "images/ + masks/" in text, name
        if name != "salient_folder":
            assert "http" in text and cls.HOMEPAGE in text, name
    assert "imgs/ + gt/" in BUILDERS["hku_is"].MANUAL_DOWNLOAD_INSTRUCTIONS
    assert "Imgs/" in BUILDERS["msra10k"].MANUAL_DOWNLOAD_INSTRUCTIONS


# ------------------------------------------------------------------------------------------ load_source errors


def test_load_source_errors_are_one_line(ecssd, tmp_path):
    builder, manual, tmp = ecssd
    with pytest.raises(DataError) as excinfo:
        load_source("ecssd", split="test", data_dir=tmp_path / "empty")
    assert "python -m menet_datasets.prepare ecssd --manual-dir" in one_line_message(excinfo, tmp_path / "empty")
    with pytest.raises(DataError) as excinfo:
        load_source("ecsd", split="test", data_dir=tmp / "tfds")
    assert "ecssd" in one_line_message(excinfo) and "salient_folder" in str(excinfo.value)
    with pytest.raises(DataError) as excinfo:
        load_source("ecssd", split="train", data_dir=tmp / "tfds")
    assert "splits: test" in one_line_message(excinfo)
    with pytest.raises(DataError) as excinfo:  # prepared from another folder: never mixed up silently
        load_source("ecssd", split="test", data_dir=tmp / "tfds", manual_dir=tmp_path)
    one_line_message(excinfo, manual.resolve(), tmp_path)
    assert len(load_source("ecssd", split=None, data_dir=tmp / "tfds")) == len(ECSSD_STEMS)  # its only split


# ---------------------------------------------------------------------------------------------- input pipeline


def test_prepared_batches_equal_folder_batches_and_resume(ecssd):
    builder, manual, _ = ecssd
    prepared, folder = TFDSSource(builder, "test"), FolderSource(manual)
    kw = dict(batch_size=5, size=48, seed=3, shuffle=True, augment=True)
    with BatchLoader(prepared, 0, 6, workers=2, **kw) as loader:
        full = list(loader)
    with BatchLoader(prepared, 4, 2, workers=2, **kw) as loader:
        resumed = list(loader)
    assert [s for s, _ in full] == list(range(6)) and [s for s, _ in resumed] == [4, 5]
    for (_, a), (_, b) in zip(full[4:], resumed):  # a restart at step 4 continues exactly
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["mask"], b["mask"])
    assert not np.array_equal(full[4][1]["image"], full[5][1]["image"])
    for step, batch in full:  # the prepared dataset gives the folder's batches, bit for bit
        ref = make_batch(folder, step, **kw)
        np.testing.assert_array_equal(batch["image"], ref["image"])
        np.testing.assert_array_equal(batch["mask"], ref["mask"])
    # The authors' fixed order: step k reads examples k*B ... k*B+B-1.
    fixed = make_batch(prepared, 1, **{**kw, "shuffle": False, "augment": False})
    ref = menet_datasets.resize_pair(prepared[5]["image"], prepared[5]["mask"], 48)
    np.testing.assert_array_equal(fixed["image"][0], ref[0])


def test_training_sources_from_a_prepared_dataset(ecssd, tmp_path):
    from menet_jax.core.config import get_config
    from menet_jax.training.loop import make_sources

    builder, manual, tmp = ecssd
    config = get_config("tiny", ["val_size=4"])
    train, val = make_sources(config, dataset="ecssd", tfds_dir=tmp / "tfds")
    assert len(train) == len(ECSSD_STEMS) - 4 and len(val) == 4  # only a test split: seeded hold-out
    assert not set(train.indices.tolist()) & set(val.indices.tolist())
    stems = [str(k) for k in range(40)]
    _write_pairs(tmp_path / "m" / "Imgs", tmp_path / "m" / "Imgs", stems)
    train, val = make_sources(config, dataset="msra10k", manual_dir=tmp_path / "m", tfds_dir=tmp_path / "tfds")
    assert isinstance(val, TFDSSource) and val.split == "validation" and len(val) == 2 and len(train) == 34
    with pytest.raises(DataError):
        make_sources(config, "somewhere", dataset="ecssd")


def test_no_progress_also_silences_tfds_bars(shared_data, tmp_path, capfd):
    """--no-progress reaches the first-use build: TFDS's own bars appear with progress on and not with it off."""
    import argparse

    from menet_datasets.cli import sources_from_args

    manual = _link_subset(shared_data / "ECSSD", tmp_path / "manual", ECSSD_STEMS[:3])
    try:
        for progress, tfds_dir in ((True, "on"), (False, "off")):
            tfds.display_progress_bar(True)
            capfd.readouterr()
            args = argparse.Namespace(
                data_dir=[],
                dataset=["salient_folder"],
                split=None,
                manual_dir=manual,
                tfds_dir=tmp_path / tfds_dir,
                no_progress=not progress,
            )
            ((name, source),) = sources_from_args(args)
            assert name == "salient_folder" and len(source) == 3
            err = capfd.readouterr().err
            assert ("%|" in err) == progress, err[-500:]
    finally:
        tfds.disable_progress_bar()
