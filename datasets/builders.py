"""TensorFlow Datasets builders for the benchmarks of the paper (Sec. IV-A), DUTS, PASCAL-S and any folder.

None of these benchmarks has a stable download address or an open licence, so every builder reads a copy the user
downloaded (TFDS's *manual dir*) in its official release layout or the plain ``images/`` + ``masks/`` one, and
writes array_record files that :func:`tensorflow_datasets.data_source` reads back without TensorFlow.

Features: ``image`` (uint8 H x W x 3, original size), ``mask`` (uint8 H x W x 1, 0/255, binarised at 128),
``mask_soft`` (the 8-bit mask as it is, only for DUTS, PASCAL-S and ``salient_folder``, whose masks are soft),
``name`` (the file stem, stored as its bytes: any file name, UTF-8 or not) and ``image_format`` (the original
file's format, e.g. JPEG). Examples are stored in stem order (shuffling disabled), so index ``i`` is the ``i``-th
stem, as in :class:`~menet_datasets.folder.FolderSource`.

Nothing is lost: an 8-bit RGB JPEG keeps its original bytes, every other image (greyscale, CMYK, palette, RGBA,
16-bit, EXIF-rotated to match its mask) is stored as a lossless PNG of the array
:func:`~menet_datasets.folder.load_pair` returns, the same array a FolderSource of the folder gives. The bad-input
policy is that of :mod:`menet_datasets.folder`: a one-line :class:`DataError` naming the file, or with ``skip_bad``
the pair is skipped and listed in the dataset's metadata (``skipped``) and in ``menet_datasets.prepare``'s report.
"""

from __future__ import annotations

import inspect
import io
import os
from pathlib import Path

import numpy as np
import scipy.io
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from .errors import DataError
from .folder import LAYOUTS, Layout, find_layout, load_pair, scan

#: Seed of the documented seeded splits (MSRA10K, HKU-IS without list files).
SPLIT_SEED = 0

_PLAIN = "the plain layout images/ + masks/ (<stem>.jpg images, <stem>.png masks)"


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def seeded_split(pairs: list, counts: dict, seed: int = SPLIT_SEED) -> dict:
    """Deterministic split of ``pairs`` (sorted by stem) into ``counts`` = {split: size} (one size may be None:
    the rest). ``np.random.default_rng(seed).permutation(len(pairs))`` is cut into the splits in the order of
    ``counts``; each split keeps stem order."""
    n = len(pairs)
    fixed = sum(c for c in counts.values() if c is not None)
    if fixed > n:
        raise DataError(f"cannot split {n} examples into {counts}")
    perm = np.random.default_rng(seed).permutation(n)
    out, start = {}, 0
    for name, count in counts.items():
        count = n - fixed if count is None else count
        out[name] = [pairs[i] for i in np.sort(perm[start : start + count])]
        start += count
    return out


class SalientBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Common part: features, the bad-input policy, the build report kept in the metadata."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: original-size images, 0/255 masks, stem order."}
    #: Whether the source's masks are soft (anti-aliased, grey levels): then ``mask_soft`` keeps them.
    SOFT_MASKS = False
    HOMEPAGE = ""
    CITATION = ""
    DESCRIPTION = ""

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        """This file. TFDS 4.9.10 finds it through ``importlib_resources``, which it only requires (and so only
        installs) on Python < 3.9: its own lookup fails for builders defined in a package."""
        return epath.Path(inspect.getfile(cls))

    def __init__(self, *, skip_bad: bool = False, **kwargs):
        self.skip_bad = skip_bad
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        features = {
            "image": tfds.features.Image(shape=(None, None, 3)),
            "mask": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
            "name": tfds.features.Text(),
            "image_format": tfds.features.Text(),
        }
        if self.SOFT_MASKS:
            features["mask_soft"] = tfds.features.Image(shape=(None, None, 1), encoding_format="png")
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict(features),
            homepage=self.HOMEPAGE,
            citation=self.CITATION,
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    # ------------------------------------------------------------------------------------------ splits
    def _split_generators(self, dl_manager):
        manual = Path(dl_manager.manual_dir)
        if not manual.is_dir():
            raise DataError(f"manual dir not found: {manual}")
        meta = self.info.metadata
        meta.update(
            source=str(manual.resolve()),
            names={},
            skipped=[],
            ignored=[],
            image_formats={},
            stored_as_png=0,
            exif_rotated=0,
            non_binary_masks=0,
            layouts=[],
        )
        splits = self._splits(manual)
        if not any(splits.values()):
            raise DataError(f"{manual}: no examples found")
        return {split: self._generate_examples(pairs, split) for split, pairs in splits.items() if pairs}

    def _splits(self, manual: Path) -> dict:
        """{split name: [(image path, mask path)]} of the manual dir; the default is one test split."""
        return {"test": self._pairs(manual)}

    def _pairs(self, root: Path, layouts=LAYOUTS) -> list:
        """The pairs of ``root``; images without masks and masks without images follow the bad-input policy."""
        return self._scan(root, layouts).pairs

    def _scan(self, root: Path, layouts=LAYOUTS):
        found = scan(root, layouts)
        meta = self.info.metadata
        meta["layouts"].append(f"{found.layout.name} ({found.root})")
        meta["ignored"].extend(str(path) for path in found.ignored)
        for _, message in found.orphans:
            if not self.skip_bad:
                more = len(found.orphans) - 1
                raise DataError(message + (f" (and {more} more unmatched or unreadable files)" if more else ""))
            meta["skipped"].append(message)
        return found

    # ---------------------------------------------------------------------------------------- examples
    def _generate_examples(self, pairs, split):
        meta = self.info.metadata
        names = meta["names"].setdefault(split, [])
        for image_path, mask_path in pairs:
            try:
                pair = load_pair(image_path, mask_path)
            except DataError as error:
                if not self.skip_bad:
                    raise
                meta["skipped"].append(str(error))
                continue
            if pair.stored_as_is:
                try:
                    image = Path(image_path).read_bytes()
                except OSError as error:  # removed or made unreadable since load_pair read it
                    if not self.skip_bad:
                        raise DataError(f"{image_path}: cannot read image ({error.strerror or error})") from None
                    meta["skipped"].append(f"{image_path}: cannot read image ({error.strerror or error})")
                    continue
            else:
                image = _png(pair.image)
                meta["stored_as_png"] += 1
            formats = meta["image_formats"]
            formats[pair.image_format] = formats.get(pair.image_format, 0) + 1
            meta["exif_rotated"] += int(pair.exif_rotated)
            if not np.isin(pair.mask_grey, (0, 255)).all():
                meta["non_binary_masks"] += 1
            stem = Path(image_path).stem
            # The name's bytes (any, as Linux allows; TFDS would refuse a str with an undecodable byte), read back
            # as the same str as the file's (TFDSSource); the metadata (JSON) keeps the str's escapes.
            example = {
                "image": image,
                "mask": _png(pair.mask),
                "name": os.fsencode(stem),
                "image_format": pair.image_format,
            }
            if self.SOFT_MASKS:
                example["mask_soft"] = _png(pair.mask_grey)
            # Integer keys: with shuffling disabled TFDS writes the examples sorted by key, i.e. in stem order.
            yield len(names), example
            names.append(stem)


def _instructions(published: str, layouts: str) -> str:
    return (
        f"{published}\n\nPass the folder you extracted as the manual dir "
        f"(python -m menet_datasets.prepare NAME --manual-dir DIR). Layouts accepted: {layouts}; or {_PLAIN}."
    )


class Ecssd(SalientBuilder):
    """ECSSD: 1000 images of complex scenes; one test split."""

    name = "ecssd"
    HOMEPAGE = "https://www.cse.cuhk.edu.hk/leojia/projects/hsaliency/dataset.html"
    CITATION = "Yan, Xu, Shi, Jia. Hierarchical Saliency Detection. CVPR 2013."
    DESCRIPTION = __doc__
    MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions(
        f"Published by CUHK at {HOMEPAGE} (images.zip and ground_truth_mask.zip).",
        "the official images/ + ground_truth_mask/",
    )


class DutOmron(SalientBuilder):
    """DUT-OMRON: 5168 images, most with complex backgrounds; one test split."""

    name = "dut_omron"
    HOMEPAGE = "http://saliencydetection.net/dut-omron/"
    CITATION = "Yang, Zhang, Lu, Ruan, Yang. Saliency Detection via Graph-Based Manifold Ranking. CVPR 2013."
    DESCRIPTION = __doc__
    MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions(
        f"Published by Dalian University of Technology at {HOMEPAGE} (DUT-OMRON-image.zip and the pixel-wise "
        "ground truth DUT-OMRON-gt-pixelwise.zip).",
        "the official DUT-OMRON-image/ + pixelwiseGT-new-PNG/ side by side in one folder",
    )


class HkuIs(SalientBuilder):
    """HKU-IS: 4447 images, many with several salient objects; train / validation / test.

    Splits: list files in the manual dir take precedence, one per split: ``train.txt``, ``validation.txt``,
    ``test.txt`` (one stem or file name per line) or the release's ``trainImgSet.mat``, ``valImgSet.mat``,
    ``testImgSet.mat`` (the common 1447-image test list). Images in no list are split 80/5/15 among the splits
    without a list, seeded (:func:`seeded_split`, seed 0: test first, then validation, the rest train).
    """

    name = "hku_is"
    HOMEPAGE = "https://sites.google.com/site/ligb86/hkuis"
    CITATION = "Li, Yu. Visual Saliency Based on Multiscale Deep Features. CVPR 2015."
    DESCRIPTION = __doc__
    FRACTIONS = {"test": 0.15, "validation": 0.05, "train": 0.80}
    LISTS = {
        "train": ("train.txt", "trainImgSet.mat"),
        "validation": ("validation.txt", "valImgSet.mat"),
        "test": ("test.txt", "testImgSet.mat"),
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions(
        f"Published by Guanbin Li at {HOMEPAGE} (HKU-IS.rar: imgs/, gt/ and the split lists trainImgSet.mat, "
        "valImgSet.mat, testImgSet.mat). Keep the .mat lists (or train.txt / validation.txt / test.txt with one "
        "stem a line) beside imgs/ to use the common 1447-image test split; without them the split is a seeded "
        "80/5/15.",
        "the official imgs/ + gt/",
    )

    def _splits(self, manual: Path) -> dict:
        found = self._scan(manual)
        pairs = found.pairs
        by_stem = {Path(i).stem: (i, m) for i, m in pairs}
        listed, splits = set(), {}
        for split, candidates in self.LISTS.items():
            path = _find_file(candidates, manual, found.root)
            if path is None:
                continue
            stems = read_list(path)
            unknown = [s for s in stems if s not in by_stem]
            if unknown:
                raise DataError(f"{path}: {len(unknown)} listed images are not in the dataset (first: {unknown[0]!r})")
            twice = listed.intersection(stems)
            if twice:
                raise DataError(f"{path}: {sorted(twice)[0]!r} is also listed for another split")
            listed.update(stems)
            splits[split] = [by_stem[s] for s in sorted(set(stems))]
        rest = [p for p in pairs if Path(p[0]).stem not in listed]
        open_splits = {s: f for s, f in self.FRACTIONS.items() if s not in splits}
        if rest and open_splits:
            total = sum(open_splits.values())
            names = list(open_splits)
            counts = {s: round(len(rest) * open_splits[s] / total) for s in names[:-1]}
            counts[names[-1]] = None
            splits.update(seeded_split(rest, counts))
        elif rest:
            raise DataError(
                f"{manual}: {len(rest)} images are in none of the split lists (first: {Path(rest[0][0]).name})"
            )
        return {s: splits.get(s, []) for s in ("train", "validation", "test")}


def _find_file(names, *folders) -> Path | None:
    """The first of ``names`` present in the first of ``folders`` that has one."""
    return next((folder / name for folder in folders for name in names if (folder / name).is_file()), None)


def read_list(path: Path) -> list[str]:
    """Stems of a split list: a text file (one name a line) or a MATLAB file holding one cell array of names."""
    if path.suffix == ".mat":
        try:
            content = scipy.io.loadmat(path)
        except (OSError, ValueError, TypeError) as error:
            raise DataError(f"{path}: cannot read split list ({error})") from None
        arrays = [v for k, v in content.items() if not k.startswith("__")]
        if len(arrays) != 1:
            raise DataError(f"{path}: expected one array of image names, found {len(arrays)}")
        names = [str(np.asarray(v).reshape(-1)[0]) if np.asarray(v).size else "" for v in arrays[0].reshape(-1)]
    else:
        names = path.read_text().split()
    stems = [Path(n.strip()).stem for n in names if n.strip()]
    if not stems:
        raise DataError(f"{path}: the split list is empty")
    return stems


class Msra10k(SalientBuilder):
    """MSRA10K: 10000 images with pixel-wise masks; train / validation / test as in the paper.

    The paper trains on 8500, validates on 500 and tests on MSRA1K (a subset of MSRA10K). With ``msra1000.txt``
    (the MSRA1K stems in MSRA10K's naming, one a line) in the manual dir, those images are the test split and the
    others are cut into validation (500 of every 9000) and train (the rest); without it the split is seeded
    85/5/10 (8500 / 500 / 1000 of 10000). Both cuts use :func:`seeded_split` with seed 0 (validation first).
    """

    name = "msra10k"
    HOMEPAGE = "https://mmcheng.net/msra10k/"
    CITATION = "Cheng, Mitra, Huang, Torr, Hu. Global Contrast based Salient Region Detection. TPAMI 2015."
    DESCRIPTION = __doc__
    MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions(
        f"Published by Ming-Ming Cheng at {HOMEPAGE} (MSRA10K_Imgs_GT.zip). Add msra1000.txt (MSRA1K's stems, one a "
        "line) to test on MSRA1K as the paper does.",
        "the official MSRA10K_Imgs_GT/ (or the folder it was extracted into), with <stem>.jpg images and "
        "<stem>.png masks side by side in Imgs/",
    )

    def _splits(self, manual: Path) -> dict:
        found = self._scan(manual)
        pairs = found.pairs
        list_path = _find_file(("msra1000.txt",), manual, found.root)
        if list_path is not None:
            stems = set(read_list(list_path))
            known = {Path(i).stem for i, _ in pairs}
            missing = sorted(stems - known)
            if missing:
                raise DataError(
                    f"{list_path}: {len(missing)} listed images are not in the dataset (first: {missing[0]!r})"
                )
            test = [p for p in pairs if Path(p[0]).stem in stems]
            rest = [p for p in pairs if Path(p[0]).stem not in stems]
            cut = seeded_split(rest, {"validation": round(len(rest) * 500 / 9000), "train": None})
            return {"train": cut["train"], "validation": cut["validation"], "test": test}
        n = len(pairs)
        cut = seeded_split(pairs, {"validation": round(n * 0.05), "test": round(n * 0.10), "train": None})
        return {"train": cut["train"], "validation": cut["validation"], "test": cut["test"]}


class Msra1000(SalientBuilder):
    """MSRA1000 (MSRA1K, ASD): 1000 images of MSRA-B with pixel-wise masks; the paper's test set."""

    name = "msra1000"
    HOMEPAGE = "https://ivrlwww.epfl.ch/supplementary_material/RK_CVPR09/"
    CITATION = "Achanta, Hemami, Estrada, Susstrunk. Frequency-tuned Salient Region Detection. CVPR 2009."
    DESCRIPTION = __doc__
    MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions(
        f"Published by EPFL IVRL at {HOMEPAGE} (the binary masks; the images are MSRA-B's) and in the MSRA10K "
        "release's format by many benchmark collections.",
        "Imgs/ with <stem>.jpg images and <stem>.png masks side by side; images/ + binarymasks/",
    )

    LAYOUTS = (Layout("MSRA1000", "images", "binarymasks"),) + LAYOUTS

    def _splits(self, manual: Path) -> dict:
        return {"test": self._pairs(manual, self.LAYOUTS)}


class Sod(SalientBuilder):
    """SOD: 300 images of the Berkeley segmentation dataset with salient-object masks; one test split."""

    name = "sod"
    HOMEPAGE = "https://elderlab.yorku.ca/resources/salient-objects-dataset-sod/"
    CITATION = (
        "Movahedi, Elder. Design and perceptual validation of performance measures for salient object "
        "segmentation. CVPR Workshops 2010."
    )
    DESCRIPTION = __doc__
    MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions(
        f"Published by York University's Elder Lab at {HOMEPAGE} (the masks; the images are BSDS300's); the "
        "benchmark collections ship both as image/mask files.",
        "Imgs/ with <stem>.jpg images and <stem>.png masks side by side; image/ + mask/",
    )


class Duts(SalientBuilder):
    """DUTS: today's standard training set DUTS-TR (10553) and test set DUTS-TE (5019); soft masks.

    The train split is read from DUTS-TR-Image/ + DUTS-TR-Mask/ (in the manual dir or its DUTS-TR/ folder), the
    test split from DUTS-TE-Image/ + DUTS-TE-Mask/ (or DUTS-TE/); a manual dir with neither, in any other layout
    (images/ + masks/), is DUTS-TR.
    """

    name = "duts"
    SOFT_MASKS = True
    HOMEPAGE = "http://saliencydetection.net/duts/"
    CITATION = (
        "Wang, Lu, Wang, Feng, Wang, Yin, Ruan. Learning to Detect Salient Objects with Image-level "
        "Supervision. CVPR 2017."
    )
    DESCRIPTION = __doc__
    MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions(
        f"Published by Dalian University of Technology at {HOMEPAGE} (DUTS-TR.zip and DUTS-TE.zip); extract both "
        "into one folder.",
        "DUTS-TR/DUTS-TR-Image/ + DUTS-TR/DUTS-TR-Mask/ and DUTS-TE/DUTS-TE-Image/ + DUTS-TE/DUTS-TE-Mask/ (or "
        "the four folders side by side); a folder in another layout is read as DUTS-TR",
    )

    def _splits(self, manual: Path) -> dict:
        splits = {}
        for split, layout in (("train", LAYOUTS[1]), ("test", LAYOUTS[2])):
            for root in (manual, manual / layout.name):
                try:
                    find_layout(root, (layout,))
                except DataError:
                    continue
                splits[split] = self._pairs(root, (layout,))
                break
        if not splits:
            splits["train"] = self._pairs(manual)
        return splits


class PascalS(SalientBuilder):
    """PASCAL-S: 850 images of PASCAL VOC 2010 with soft salient-object masks; one test split."""

    name = "pascal_s"
    SOFT_MASKS = True
    HOMEPAGE = "https://cbs.ic.gatech.edu/salobj/"
    CITATION = "Li, Hou, Koch, Rehg, Yuille. The Secrets of Salient Object Segmentation. CVPR 2014."
    DESCRIPTION = __doc__
    MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions(
        f"Published by Georgia Tech at {HOMEPAGE} (salObj.zip; pass its datasets/ folder).",
        "the official imgs/pascal/ + masks/pascal/",
    )


class SalientFolder(SalientBuilder):
    """Any folder of images and masks matched by stem (soft masks kept); one test split.

    One prepared copy per data dir: preparing another folder needs another data dir (load_source refuses to mix
    them up).
    """

    name = "salient_folder"
    SOFT_MASKS = True
    DESCRIPTION = __doc__
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Pass the folder as the manual dir. Layouts accepted: "
        + "; ".join(layout.describe() for layout in LAYOUTS)
        + "."
    )


#: Every builder by name.
BUILDERS = {cls.name: cls for cls in (Ecssd, DutOmron, HkuIs, Msra10k, Msra1000, Sod, Duts, PascalS, SalientFolder)}
