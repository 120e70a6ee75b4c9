"""Writes the notebooks of this folder from the cell sources below, without outputs or execution counts.

    python notebooks/make_notebooks.py            # rewrite the .ipynb files
    python notebooks/make_notebooks.py --check    # exit 1 if a committed notebook differs from its source here

Edit the cells here, not in Jupyter, and commit both: tests/test_notebooks.py checks that the two agree and
executes every notebook in smoke mode (MENET_SMOKE=1).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

INSTALL = """\
# Where menet-jax is installed from: the one setting of this cell.
#   ".."                                  this checkout, when the notebook runs inside a clone (the default)
#   "/path/to/menet-jax"                  any local clone (installed editable)
#   "/content/menet_jax-0.1.0-py3-none-any.whl"   a wheel file, e.g. uploaded to Colab; build it in a clone with
#                                         `pip wheel --no-deps -w dist .`
#   "git+https://HOST/PATH/menet-jax.git"   a git repository you can reach (pip's git+ URL syntax)
# Nothing is installed when menet_jax is already importable (as in CI); with a GPU, the CUDA build of JAX comes too.
MENET_SOURCE = ".."

import importlib, importlib.util, os, shutil, subprocess, sys
if importlib.util.find_spec("menet_jax") is None:
    extra = "[gpu]" if shutil.which("nvidia-smi") else ""
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    if os.path.isdir(MENET_SOURCE):
        if not os.path.isfile(os.path.join(MENET_SOURCE, "setup.cfg")):
            raise FileNotFoundError(f"{os.path.abspath(MENET_SOURCE)} is not a menet-jax checkout: set MENET_SOURCE")
        subprocess.run(pip + ["-e", MENET_SOURCE + extra], check=True)
        sys.path.insert(0, os.path.abspath(MENET_SOURCE))   # an editable install is seen by new interpreters only
    elif os.path.isfile(MENET_SOURCE):
        subprocess.run(pip + [f"menet-jax{extra} @ file://{os.path.abspath(MENET_SOURCE)}"], check=True)
    elif "://" in MENET_SOURCE:
        subprocess.run(pip + [f"menet-jax{extra} @ {MENET_SOURCE}"], check=True)
    else:
        raise FileNotFoundError(f"MENET_SOURCE={MENET_SOURCE!r} is neither a folder, a file nor a URL: set it to a "
                                "clone of menet-jax, a wheel file or a git+ URL (see the comments above)")
    importlib.invalidate_caches()"""

SETTINGS = """\
# Settings. MENET_SMOKE=1 is the smoke mode CI runs: a tiny network, a handful of images, a few steps, on a CPU.
import os, sys
from pathlib import Path

SMOKE = os.environ.get("MENET_SMOKE") == "1"
IN_COLAB = "google.colab" in sys.modules
if IN_COLAB and not SMOKE:
    from google.colab import drive
    drive.mount("/content/drive")
    WORK = Path("/content/drive/MyDrive/menet-jax")      # checkpoints and results survive a disconnect
else:
    WORK = Path(os.environ.get("MENET_WORK", "runs"))      # local folder (runs/ is git-ignored)
# Benchmarks: folders with images/ and masks/ (or the official release layouts) side by side.
DATA = Path(os.environ.get("MENET_DATA_DIR", WORK / "data" if IN_COLAB else "../../shared/data"))
WORK.mkdir(parents=True, exist_ok=True)

import jax
from menet_jax.api import enable_compilation_cache
enable_compilation_cache()                                 # compiled programs are reused by the next run
print(f"smoke mode: {SMOKE}  devices: {jax.devices()}  work: {WORK.resolve()}  data: {DATA}")"""

HANDFUL = '''\
def handful(name, n):
    """The first n pairs of DATA/name as a folder of links under WORK (smoke mode; nothing is copied)."""
    import menet_datasets
    out = WORK / "smoke-data" / name
    for image, mask in menet_datasets.FolderSource(DATA / name).pairs[:n]:
        for path, sub in ((image, "images"), (mask, "masks")):
            link = out / sub / path.name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(path.resolve())
    return out'''


SMOKE_CHECKPOINT = """\
if SMOKE:   # the smoke checkpoint the notebooks share: a tiny network, 4 steps on generated scenes (once)
    from menet_jax import get_config
    from menet_jax.training.loop import train
    train(get_config("tiny", ["steps=4", "train_size=16", "val_size=4"]), WORK / "smoke", progress=False)"""


def md(text):
    return new_markdown_cell(text)


def code(text):
    return new_code_cell(text)


INSTALL_NOTE = """\
The first code cell installs menet-jax from `MENET_SOURCE`, set at its top: by default `..`, the checkout this
notebook sits in; else the path of a clone, a wheel file (on Colab: upload it, then give its path) or a `git+` URL
of a repository you can reach."""


def opening(title, intro):
    return [md(f"# {title}\n\n{intro}\n\n{INSTALL_NOTE}"), code(INSTALL), code(SETTINGS)]


# ------------------------------------------------------------------------------------------------- quickstart
QUICKSTART = opening(
    "MEnet quickstart: saliency maps from a trained model",
    """\
MEnet (the Metric Expression Network of the Ro-SOS paper) turns an image into two saliency maps: the **metric map** of
Eq. 5 (distance of each pixel's 16-d feature to the background's mean feature) and the **CE map** (the salient
probability of the two-class head). This notebook loads a trained checkpoint (or trains the small demo model when
there is none), predicts a few images and shows both maps next to the ground truth, then does the same with the
pure functions (`MEnet.apply`, `saliency_maps`).

Run it on Colab (*Runtime > Change runtime type > GPU*) or locally; set `MENET_SMOKE=1` for a CPU smoke run.""",
) + [
    md("""\
## 1. A checkpoint

A checkpoint is a training workdir (`config.json` + `checkpoints/<step>`). The notebook uses, in this order:
the `paper` run of `02_train_gpu.ipynb` (in `WORK/paper`), else the demo model, trained here on the generated
scenes (about a minute on a GPU, 8 minutes on 2 CPU cores). A finished run is not retrained: `train` resumes from
the latest checkpoint and only re-scores it."""),
    code("""\
from menet_jax import get_config
from menet_jax.training.loop import train

if SMOKE:
    CHECKPOINT, config = WORK / "smoke", get_config("tiny", ["steps=4", "train_size=16", "val_size=4"])
elif (WORK / "paper" / "checkpoints").is_dir():
    CHECKPOINT, config = WORK / "paper", None
else:
    CHECKPOINT, config = WORK / "demo", get_config("demo")
if config is not None:
    result = train(config, CHECKPOINT, progress=not SMOKE)
    print(f"step {result.final_step}, held-out validation: " +
          ", ".join(f"{k} {v:.4f}" for k, v in result.validation.items()))
print("checkpoint:", CHECKPOINT)"""),
    md("""\
## 2. Predict

`Predictor` takes uint8 RGB images of any size and returns both maps at each image's own size (float in [0, 1]).
Images come from ECSSD when `DATA/ECSSD` exists, else from the generated scenes the demo was trained on (the demo
model is small and has seen no photograph: on ECSSD its maps are rough). For your own files use
`menet_jax.api.load_photo(path)`, or the CLI:
`python -m menet_jax.predict p photos/ maps/ --checkpoint WORK/paper`."""),
    code("""\
import menet_datasets
from menet_jax.api import Predictor

predictor = Predictor.load(CHECKPOINT)
n = 3 if SMOKE else 6
if (DATA / "ECSSD").is_dir():
    source = menet_datasets.FolderSource(DATA / "ECSSD")
else:
    source = menet_datasets.SyntheticSource(n, 256, seed=12345)
examples = [source[i] for i in range(n)]
maps = predictor([e["image"] for e in examples])
print([(e["name"], e["image"].shape, m["metric"].shape) for e, m in zip(examples, maps)])"""),
    code("""\
import matplotlib.pyplot as plt

fig, axes = plt.subplots(len(examples), 4, figsize=(11, 2.8 * len(examples)), squeeze=False)
for row, e, m in zip(axes, examples, maps):
    panels = [("image", e["image"], 255), ("ground truth", e["mask"], 255),
              ("metric map (Eq. 5)", m["metric"], 1), ("CE map", m["ce"], 1)]
    for ax, (title, picture, top) in zip(row, panels):
        ax.imshow(picture, cmap="gray", vmin=0, vmax=top)
        ax.set_title(f"{e['name']}: {title}" if title == "image" else title, fontsize=9)
        ax.axis("off")
fig.tight_layout()
fig.savefig(WORK / "quickstart.png", dpi=80)
plt.show()"""),
    md("""\
The scores of the field (computed as PySODMetrics computes them on saved 8-bit maps; each map is min-max
normalised per image):
MAE (lower is better) and the F-beta at the adaptive threshold of Eq. 15 (higher is better)."""),
    code("""\
import numpy as np
from menet_jax.api import image_scores, to_8bit

scores = {name: [image_scores(to_8bit(m[name]), e["mask"]) for e, m in zip(examples, maps)]
          for name in ("metric", "ce")}
for name, per_image in scores.items():
    print(f"{name:6s} map: mean MAE {np.mean([s['mae'] for s in per_image]):.4f}, "
          f"mean adaptive F-beta {np.mean([s['adp_f'] for s in per_image]):.4f}")"""),
    md("""\
## 3. The pure functions

The network is a Flax module: `MEnet.apply(variables, images)` maps uint8 images at its input size
(`config.image_size`) to the 16-d tanh features and the two logits; `saliency_maps` turns them into both maps.
`background="border"` is the authors' estimate of the background feature (random border pixels, squared distance)
instead of Eq. 5's mean over all pixels the logit head calls background; it needs a PRNG key.
`menet_jax.api.init_variables(model, seed)` gives untrained variables of the same structure."""),
    code("""\
from menet_jax import MEnet, saliency_maps

model = MEnet.from_config(predictor.config)
size = predictor.config.image_size
batch = np.stack([menet_datasets.resize_pair(e["image"], e["mask"], size)[0] for e in examples])
outputs = jax.jit(lambda variables, images: model.apply(variables, images, train=False))(predictor.variables, batch)
print({k: v.shape for k, v in outputs.items()})
eq5 = saliency_maps(outputs)
border = saliency_maps(outputs, background="border", key=jax.random.key(0))
print(f"metric map, Eq. 5 vs the authors' border estimate: mean |difference| "
      f"{float(np.abs(eq5['metric'] - border['metric']).mean()):.4f}")"""),
]

# --------------------------------------------------------------------------------------------------- evaluate
EVALUATE = opening(
    "Evaluate checkpoints and published saliency maps",
    """\
The table of the paper's Table I (F-beta at the adaptive threshold and MAE, one row pair per dataset, one column
per method) plus every metric users expect today (max / mean F, S-measure, E-measure, weighted F), and PR and
F-beta curves, for one or more MEnet checkpoints and for any method's saliency maps. The numbers are PySODMetrics's
(maps resized to the ground truth's size, ground truth binarised at 128, maps min-max normalised per image).

The same from a shell:

    python -m menet_jax.evaluate --checkpoint WORK/paper --data-dir DATA/ECSSD --output eval/menet
    python -m menet_jax.evaluate --predictions maps_of_method/ --data-dir DATA/ECSSD --output eval/method""",
) + [
    code(HANDFUL),
    code(SMOKE_CHECKPOINT),
    md("""\
## 1. What to evaluate

* `CHECKPOINTS`: name -> training workdir (both maps of each are scored: `name-metric`, `name-ce`); by default the
  `paper` run of `02_train_gpu.ipynb` and the demo of `01_quickstart.ipynb`, where they exist.
* `PUBLISHED`: name -> folder of another method's maps, `FOLDER/<stem>.png` or `FOLDER/<dataset>/<stem>.png`
  (the layout of PySODEvalToolkit, in which most authors publish their maps). Every ground-truth stem needs a map.
  In a checkout, `python benchmarks/u2netp_peer.py --images DATA/ECSSD/images --output WORK/maps/u2netp/ECSSD`
  writes the maps of the pretrained U^2-Netp (`pip install -e ".[bench]"`); it was trained on DUTS-TR.
* `SOURCES`: name -> dataset: folders with `images/` and `masks/` under `DATA`, and the test split of MSRA10K
  when `02_train_gpu.ipynb` prepared it (MSRA1K with a `msra1000.txt` list, as the paper). The paper's test sets
  are DUT-OMRON, HKU-IS, ECSSD, MSRA1K and SOD; `python -m menet_datasets.prepare` builds any of them.

As a reference method that needs no download, the notebook adds the **centre prior**, a fixed Gaussian blob in the
middle of every image, written in that layout by the cell below; any method should beat it."""),
    code("""\
import menet_datasets
from menet_datasets.builders import BUILDERS
from menet_datasets.tfds_source import load_source

if SMOKE:
    CHECKPOINTS = {"tiny": WORK / "smoke"}
    SOURCES = {"ECSSD": menet_datasets.FolderSource(handful("ECSSD", 8))}
else:
    CHECKPOINTS = {name: workdir for name, workdir in (("MEnet", WORK / "paper"), ("demo", WORK / "demo"))
                   if (workdir / "checkpoints").is_dir()}
    assert CHECKPOINTS, "no checkpoint yet: run 02_train_gpu.ipynb (or 01_quickstart.ipynb for the demo)"
    SOURCES = {name: menet_datasets.FolderSource(DATA / name)
               for name in ("DUT-OMRON", "HKU-IS", "ECSSD", "MSRA1000", "SOD", "DUTS-TE") if (DATA / name).is_dir()}
    if BUILDERS["msra10k"](data_dir=str(WORK / "tfds")).is_prepared():
        SOURCES["MSRA10K-test"] = load_source("msra10k", split="test", data_dir=WORK / "tfds")
PUBLISHED = {}                                         # e.g. {"U2-Netp": WORK / "maps" / "u2netp"}
print("checkpoints:", CHECKPOINTS)
print("datasets:", {name: len(source) for name, source in SOURCES.items()})"""),
    code('''\
import numpy as np
from PIL import Image


def centre_prior(height, width, sigma=0.25):
    """A Gaussian blob of standard deviation sigma x side at the image centre, as 8-bit grey."""
    y = (np.arange(height)[:, None] + 0.5) / height - 0.5
    x = (np.arange(width)[None, :] + 0.5) / width - 0.5
    return np.round(255 * np.exp(-(x ** 2 + y ** 2) / (2 * sigma ** 2))).astype(np.uint8)


for name, source in SOURCES.items():
    out = WORK / "maps" / "centre-prior" / name
    out.mkdir(parents=True, exist_ok=True)
    for i, stem in enumerate(source.names):
        if not (out / f"{stem}.png").exists():
            Image.fromarray(centre_prior(*source[i]["mask"].shape)).save(out / f"{stem}.png")
PUBLISHED["centre"] = WORK / "maps" / "centre-prior"'''),
    md("## 2. Score"),
    code("""\
from menet_jax.evaluation import evaluate_source, load_prediction, match_predictions, prediction_folder
from menet_jax.api import MAPS
from menet_jax.api import Predictor

predictors = {name: Predictor.load(workdir) for name, workdir in CHECKPOINTS.items()}
results, rows = {}, []                                 # results["ECSSD/MEnet-metric"] = dataset scores
for dataset, source in SOURCES.items():
    for method, predictor in predictors.items():
        scores, per_image = evaluate_source(dataset, source, lambda idx, ex, p=predictor: p([e["image"] for e in ex]),
                                            MAPS, progress=not SMOKE)
        results.update({f"{dataset}/{method}-{m}": s for m, s in scores.items()})
        rows += [{**r, "map": f"{method}-{r['map']}"} for r in per_image]
    for method, maps_folder in PUBLISHED.items():
        paths = match_predictions(dataset, source.names, prediction_folder(Path(maps_folder), dataset))
        read = lambda idx, ex, paths=paths: [{"": load_prediction(paths[i], *e["mask"].shape)} for i, e in zip(idx, ex)]
        scores, per_image = evaluate_source(dataset, source, read, ("",), progress=not SMOKE)
        results[f"{dataset}/{method}"] = scores[""]
        rows += [{**r, "map": method} for r in per_image]"""),
    code('''\
def table_one(results):
    """Table I's layout: an F-beta (adaptive) / MAE row pair per dataset, one column per method."""
    columns = sorted({key.split("/", 1)[1] for key in results})
    width = max(8, *map(len, columns)) + 2
    lines = [f"{'dataset':12s} {'':7s}" + "".join(f"{c:>{width}s}" for c in columns)]
    for dataset in SOURCES:
        for label, key in (("F-beta", "adp_f"), ("MAE", "mae")):
            cells = [results.get(f"{dataset}/{c}", {}).get(key) for c in columns]
            lines.append(f"{dataset if key == 'adp_f' else '':12s} {label:7s}" +
                         "".join(f"{v:{width}.4f}" if v is not None else f"{'-':>{width}s}" for v in cells))
    return "\\n".join(lines)


print(table_one(results))
print()
keys = ("n_images", "mae", "adp_f", "max_f", "mean_f", "s_measure", "adp_e", "max_e", "mean_e", "w_f")
print(f"{'dataset/method':28s}" + "".join(f"{k:>10s}" for k in keys))
for name, r in results.items():
    print(f"{name:28s}{r['n_images']:10d}" + "".join(f"{r[k]:10.4f}" for k in keys[1:]))'''),
    md("""\
## 3. Curves and files

`write_outputs` writes `results.json` (every number above), `per_image.csv` (one row per image and map) and the
PR and F-beta-vs-threshold curves of every dataset and method, as `evaluate` does. The paper draws its PR curves
(Fig. 5, Fig. 7) with the CE map: the metric map is nearly binary and gives short curves."""),
    code("""\
from IPython.display import Image as Picture, display
from menet_jax.evaluation import write_outputs

OUTPUT = WORK / "eval"
write_outputs(results, rows, OUTPUT)
print("wrote", sorted(p.name for p in OUTPUT.iterdir()))
display(Picture(filename=str(OUTPUT / "pr_curve.png")), Picture(filename=str(OUTPUT / "f_curve.png")))"""),
    md("The images a checkpoint gets most wrong (highest MAE of its metric map), to look at:"),
    code("""\
first = f"{next(iter(CHECKPOINTS))}-metric"
worst = sorted((r for r in rows if r["map"] == first), key=lambda r: -r["mae"])[:5]
for r in worst:
    print(f"{r['dataset']}/{r['name']}: MAE {r['mae']:.4f}, adaptive F-beta {r['adp_f']:.4f}")"""),
]

# ------------------------------------------------------------------------------------------------- train (GPU)
TRAIN_GPU = opening(
    "Train MEnet on a GPU (the paper's configuration)",
    """\
Prepares a benchmark with the dataset builders, trains the `paper` configuration (224 px, 184,959,166 parameters,
batch 5, SGD 0.1 divided by 10 at 60k / 90k / 100k steps, 110k steps) with checkpoints in a folder that survives
a Colab disconnect, and plots the curves of `metrics.jsonl`.

On Colab: *Runtime > Change runtime type > GPU*, then *Run all*. The settings cell mounts Google Drive and keeps
everything in `MyDrive/menet-jax`. After a disconnect (or when the session's time is up) reconnect and *Run all*
again: training resumes from the latest checkpoint, and a batch is a function of the seed and the step, so the
resumed run ends with the parameters of an uninterrupted one. With `MENET_SMOKE=1` it trains the tiny network on a
handful of DUTS-TR pairs for a few steps on a CPU instead.""",
) + [
    code(HANDFUL),
    code("""\
print(jax.devices())
if not SMOKE and jax.default_backend() == "cpu":
    print("no GPU: the paper configuration needs hours on a GPU and far longer on a CPU "
          "(Runtime > Change runtime type > GPU)")"""),
    md("""\
## 1. Prepare a benchmark

The paper trains on **MSRA10K** (8500 images for training, 500 for validation, MSRA1K for testing). Research
benchmarks cannot be redistributed, so the download is manual:

1. Download `MSRA10K_Imgs_GT.zip` from https://mmcheng.net/msra10k/ (Ming-Ming Cheng's page).
2. Put it on Google Drive as `MyDrive/menet-jax/downloads/MSRA10K_Imgs_GT.zip` (or, outside Colab, as
   `WORK/downloads/MSRA10K_Imgs_GT.zip`).
3. Optional, to test on MSRA1K as the paper does: a text file `msra1000.txt` with the MSRA1K stems (MSRA10K's
   naming, one a line), put into the extracted folder; without it the split is a seeded 8500 / 500 / 1000.

The cell below extracts the archive to the local disk and builds the TFDS dataset (array_record files) in
`WORK/tfds`, on Drive, once: a rerun finds it prepared. For today's standard training set use
`DATASET = "duts"` with `DUTS-TR.zip` and `DUTS-TE.zip` from http://saliencydetection.net/duts/ instead.
`python -m menet_datasets.prepare NAME --instructions` says where each benchmark is published and which layouts it reads
(names: dut_omron, duts, ecssd, hku_is, msra1000, msra10k, pascal_s, salient_folder, sod)."""),
    code("""\
import shutil
from menet_datasets.builders import BUILDERS
from menet_datasets.prepare import main as prepare

TFDS_DIR = WORK / "tfds"
if SMOKE:
    DATASET, MANUAL = "duts", handful("DUTS-TR-subset", 12)     # plain images/ + masks/: read as DUTS-TR
else:
    DATASET = "msra10k"
    ARCHIVE = WORK / "downloads" / "MSRA10K_Imgs_GT.zip"
    MANUAL = Path("/content/downloads" if IN_COLAB else WORK / "downloads") / "msra10k"
if not BUILDERS[DATASET](data_dir=str(TFDS_DIR)).is_prepared():
    if not SMOKE and not MANUAL.is_dir():
        print(f"extracting {ARCHIVE} to {MANUAL}")
        shutil.unpack_archive(ARCHIVE, MANUAL)
    assert prepare([DATASET, "--manual-dir", str(MANUAL), "--data-dir", str(TFDS_DIR)]) == 0
print(DATASET, "prepared in", TFDS_DIR)"""),
    code("""\
import matplotlib.pyplot as plt
from menet_datasets.tfds_source import load_source

train_source = load_source(DATASET, split="train", data_dir=TFDS_DIR)
print(train_source)
fig, axes = plt.subplots(2, 4, figsize=(10, 5))
for i, (top, bottom) in enumerate(zip(*axes)):
    example = train_source[i]
    top.imshow(example["image"]), top.set_title(example["name"], fontsize=8)
    bottom.imshow(example["mask"], cmap="gray")
    top.axis("off"), bottom.axis("off")
plt.show()"""),
    md("""\
## 2. Train

`train` is what `python -m menet_jax.train` runs. It saves a checkpoint every `checkpoint_every` steps in
`RUN/checkpoints/<step>` (Orbax writes to a temporary folder and renames it when complete, so a disconnect
during a save leaves the previous one intact), scores the validation split every `eval_every` steps and logs
to `RUN/metrics.jsonl`. The paper preset saves every 5000 steps; here every 1000, so a disconnect loses little.
The same from a shell:

    python -m menet_jax.train --config paper --dataset msra10k --tfds-dir WORK/tfds --workdir WORK/paper \\
        --set checkpoint_every=1000"""),
    code("""\
import dataclasses
from menet_jax import get_config
from menet_jax.api import describe
from menet_jax.training.loop import train

# Compute dtype: "bfloat16" runs convolutions and activations in bfloat16 (parameters, optimizer state, BatchNorm
# statistics, loss and metrics stay float32), the usual choice on a GPU; float32 is the default.
DTYPE = "float32"
if SMOKE:   # the smoke run exercises bfloat16 compute
    RUN = WORK / "smoke-train"
    config = get_config("tiny", ["steps=6", "checkpoint_every=2", "log_every=1", "eval_every=4", "val_size=4",
                                 "dtype=bfloat16"])
else:
    RUN = WORK / "paper"
    config = get_config("paper", ["checkpoint_every=1000", f"dtype={DTYPE}"])
print(describe(config))"""),
    code("""\
if SMOKE:   # a stand-in for a disconnect: stop after 4 steps; the next call resumes from that checkpoint
    train(dataclasses.replace(config, steps=4), RUN, dataset=DATASET, tfds_dir=TFDS_DIR, progress=False)
result = train(config, RUN, dataset=DATASET, tfds_dir=TFDS_DIR, progress=not SMOKE)
print(f"trained steps {result.start_step}..{result.final_step}; checkpoint: {result.checkpoint}")
print("validation:", ", ".join(f"{k} {v:.4f}" for k, v in result.validation.items()))"""),
    md("""\
## 3. Curves

`metrics.jsonl` has one record per `log_every` steps (`split: train`: the loss and its metric / CE terms, the
fraction of pixels kept by the 1:1 mining, learning rate, gradient norm, images/s) and one per validation
(`split: validation`: MAE and adaptive F-beta of the metric map, the CE map and, at the end, the all-background
baseline)."""),
    code("""\
from IPython.display import Image as ShowImage

from menet_jax.training.curves import plot_training, read_log

train_log, val_log = read_log(RUN)
display(ShowImage(filename=str(plot_training(RUN))))
print(f"{len(train_log)} training records up to step {train_log[-1]['step']}, {len(val_log)} validations")"""),
    md("""\
Next: `01_quickstart.ipynb` shows this checkpoint's maps, `03_evaluate.ipynb` scores it on the test sets
(Table I), `04_robustness.ipynb` measures its robustness (Table II, Fig. 9, Table III)."""),
]

# ------------------------------------------------------------------------------------------------- robustness
ROBUSTNESS = opening(
    "Robustness of a MEnet checkpoint: distortions, Jacobians, Lipschitz bounds, certification",
    """\
The paper's robustness claims, measured on a checkpoint:

* **Table II**: adaptive F-beta on images distorted by additive white Gaussian noise (AWGN) or JPEG compression
  "with random strengths"; **Fig. 9**: F-beta against the noise variance.
* **Table III**: statistics of the gradient g of the summed output with respect to the input image, per image
  (max, min, median, mean, variance of |g|), averaged over a dataset; with the local norms of the Jacobian
  (spectral by power iteration, Frobenius by Hutchinson) and the Monte Carlo estimates of Eq. 12.
* **Eq. 13**: certified upper bounds of the network's Lipschitz constant.
* **Certification** (not in the paper): per-pixel certified radii of the smoothed network by randomized smoothing.

The paper does not give its distortion strengths, and the authors' Table III script differentiates a constant (the
sum of both softmax channels), so `robustness/` defines its own protocol; the cells say which choices are made.
Everything runs through `python -m robustness.evaluate`, `robustness.jacobian` and `robustness.lipschitz`,
called here in the notebook's process: each cell's arguments are the command's. `docs/robustness.md` says what
each number means, what it costs and how the estimators were validated.""",
) + [
    code(HANDFUL),
    code(SMOKE_CHECKPOINT),
    md("""\
## 0. Checkpoint and data

The `paper` run of `02_train_gpu.ipynb`, else the demo of `01_quickstart.ipynb`; the paper's test sets found in
`DATA` (folders with `images/` and `masks/`; `--dataset NAME` reads a prepared one instead). The Jacobian analysis
costs a few backward passes per image: `JACOBIAN_LIMIT` images per dataset."""),
    code("""\
import menet_datasets

if SMOKE:
    CHECKPOINT, FOLDERS, LIMIT, JACOBIAN_LIMIT = WORK / "smoke", [handful("ECSSD", 3)], [], 1
else:
    CHECKPOINT = next(w for w in (WORK / "paper", WORK / "demo") if (w / "checkpoints").is_dir())
    FOLDERS = [DATA / name for name in ("DUT-OMRON", "HKU-IS", "ECSSD", "MSRA1000", "SOD") if (DATA / name).is_dir()]
    LIMIT, JACOBIAN_LIMIT = [], 100
assert FOLDERS, f"no benchmark folder in {DATA}"
DATA_ARGS = [arg for folder in FOLDERS for arg in ("--data-dir", str(folder))]
OUT = WORK / "robustness"
print("checkpoint:", CHECKPOINT, "\\ndatasets:", [f.name for f in FOLDERS])"""),
    md("""\
## 1. Distortions

`robustness.distort(image, kind, level, rng)` returns a uint8 image, as a camera or a file would hand it to a
model. AWGN: N(0, variance) per pixel and channel on the 0..255 scale, rounded and clipped; JPEG: a Pillow round
trip at a quality, chroma 4:2:0. The levels below are the five ImageNet-C severities (AWGN variances 416 .. 9390,
JPEG qualities 25 .. 7). Every image has its own seeded generator, so results do not depend on the batch.
Under each image, the checkpoint's metric map (Fig. 10 and 11 of the paper show such rows)."""),
    code("""\
import matplotlib.pyplot as plt
from menet_jax.api import Predictor
from robustness import distort, image_rng, severity_levels

predictor = Predictor.load(CHECKPOINT)
example = menet_datasets.FolderSource(FOLDERS[0])[0]
fig, axes = plt.subplots(4, 6, figsize=(14, 9.5))
for row, kind in enumerate(("awgn", "jpeg")):
    levels = severity_levels(kind)
    images = [example["image"]] + [distort(example["image"], kind, level, image_rng(0, 0, example["name"]))[0]
                                   for level in levels]
    for col, (image, maps, label) in enumerate(zip(images, predictor(images), ["clean", *levels])):
        axes[2 * row, col].imshow(image)
        axes[2 * row, col].set_title(f"{kind} {label:.0f}" if col else "clean", fontsize=9)
        axes[2 * row + 1, col].imshow(maps["metric"], cmap="gray", vmin=0, vmax=1)
for ax in axes.flat:
    ax.axis("off")
fig.tight_layout()
plt.show()"""),
    md("""\
## 2. Table II and Fig. 9

The level `random` is Table II's protocol: one strength per image, uniform over the ImageNet-C range (AWGN sigma
0.08 .. 0.38 on the [0, 1] scale, JPEG quality 7 .. 25): the last row of each table. The fixed levels (clean and
the five severities) give the curves of Fig. 9. Maps are scored against the untouched ground truth both with the
field's per-image min-max normalisation and without it (`raw`): normalising stretches a flat, noise-damaged map and
hides damage."""),
    code("""\
from IPython.display import Image as Picture, Markdown, display
from robustness.evaluate import main as robustness_evaluate

for kind, clean in (("awgn", 0), ("jpeg", 100)):
    levels = [clean, *severity_levels(kind), "random"]
    assert robustness_evaluate(["--checkpoint", str(CHECKPOINT), *DATA_ARGS, *LIMIT, "--distortion", kind,
                                "--levels", *map(str, levels), "--output", str(OUT / kind), "--no-progress"]) == 0
    display(Markdown((OUT / kind / "table.md").read_text()), Picture(filename=str(OUT / kind / "curves.png")))"""),
    md("""\
## 3. Table III, Jacobian norms and the Monte Carlo estimates of Eq. 12

`robustness.jacobian` differentiates the sum of the salient-channel probability (the meaningful reading of Table
III) in evaluation mode, and reports per image the statistics of |g|, ||J||_2 (power iteration), ||J||_F
(Hutchinson, with a 95 % interval) and Eq. 12's E ||f(x + t n) - f(x)||^2 / t^2 over random unit directions
(Gaussian, AWGN and JPEG residuals) for a schedule of t and in the limit t -> 0. The second run repeats the
authors' objective (both softmax channels, BatchNorm in training mode): its gradient is exactly zero in exact
arithmetic, so what it prints is float32 round-off, as are the 1e-8 .. 1e-19 values of the paper's table."""),
    code("""\
import json
from robustness.jacobian import main as robustness_jacobian

QUICK = ["--power-iterations", "3", "--probes", "2", "--mc-directions", "1", "--t-schedule", "1"] if SMOKE else []
common = ["--checkpoint", str(CHECKPOINT), *DATA_ARGS, "--limit", str(JACOBIAN_LIMIT), "--no-progress"]
assert robustness_jacobian([*common, *QUICK, "--output-dir", str(OUT / "jacobian")]) == 0
authors = ["--authors-objective", "--bn-train-mode", "--power-iterations", "0", "--probes", "0", "--mc-directions", "0"]
assert robustness_jacobian([*common, *authors, "--output-dir", str(OUT / "jacobian-authors")]) == 0
display(Picture(filename=str(OUT / "jacobian" / "gradient_histogram.png")))"""),
    code("""\
ours = json.loads((OUT / "jacobian" / "jacobian.json").read_text())["datasets"]
authors = json.loads((OUT / "jacobian-authors" / "jacobian.json").read_text())["datasets"]
for name in ours:
    print(f"{name}: max |g|, salient probability (eval mode) {ours[name]['summary']['gradient']['max']:.4g}; "
          f"both channels, train-mode BN (authors) {authors[name]['summary']['gradient']['max']:.4g}")"""),
    md("""\
## 4. Lipschitz bounds (Eq. 13)

Two certified upper bounds of ||f(x) - f(y)|| / ||x - y|| for each output, read off the network's evaluation-mode
computation: the paper's element-wise bound (|W| through every linear layer, slope 1 for ReLU and tanh) and the
layerwise product of operator norms (convolutions by the largest singular value of their kernel's DFT). The metric
map has no bound: it L2-normalises the features, and x / ||x|| is not Lipschitz near 0."""),
    code("""\
from robustness.lipschitz import main as robustness_lipschitz

outputs = "salient_prob" if SMOKE else "all"          # all: logits, features, salient_prob and metric_map
quick = ["--power-iterations", "0"] if SMOKE else []
assert robustness_lipschitz(["--checkpoint", str(CHECKPOINT), "--output", outputs,
                             "--json", str(OUT / "lipschitz.json"), *quick]) == 0"""),
    md("""\
## 5. One report

`python -m robustness.report` puts the certified bounds, the local Jacobian norms, the Eq. 12 estimates and the
measured degradation under each distortion side by side (`report.md`, `report.json`)."""),
    code("""\
from robustness.report import main as robustness_report

assert robustness_report(["--lipschitz", str(OUT / "lipschitz.json"),
                          "--jacobian", str(OUT / "jacobian" / "jacobian.json"),
                          "--evaluate", str(OUT / "awgn" / "robustness.json"), str(OUT / "jpeg" / "robustness.json"),
                          "--output", str(OUT / "report")]) == 0
display(Markdown((OUT / "report" / "report.md").read_text()))"""),
    md("""\
## 6. Certified robustness (randomized smoothing)

`robustness.certify` (SegCertify, Fischer et al. 2021) certifies each pixel of the smoothed network, the class
the map thresholded at 0.5 takes most often under Gaussian noise N(0, sigma^2) on the whole image (sigma = 64 on
the 0..255 scale): n0 noisy copies guess each pixel's class, n more count how often it comes out, and Holm's
procedure over the pixels (family-wise level 0.001) certifies a pixel or abstains. A certified pixel keeps its class
under every perturbation of the image with L2 norm below its radius. Here the shipped weights (160 px) on the first
images, with few samples (`python -m robustness.certify` runs whole datasets). Like every analysis in
`robustness/`, `certify_image` takes the model as `(f, params, x)`: `network_maps(config, "ce")` is MEnet's `f`,
its variables the `params` (docs/api.md, "Analyse your own Flax model", does the same with any Flax module)."""),
    code("""\
import numpy as np
from menet_jax.api import load_network
from robustness import certify

variables, config = load_network(dtype="float32")       # the shipped weights
f = certify.network_maps(config, "ce")                   # MEnet as f(params, images): the salient probability
source = menet_datasets.FolderSource(FOLDERS[0])
IMAGES, N0, N = (1, 8, 32) if SMOKE else (2, 16, 96)
fig, axes = plt.subplots(IMAGES, 4, figsize=(13, 3.4 * IMAGES), squeeze=False)
for i, row in enumerate(axes):
    image, mask = menet_datasets.resize_pair(source[i]["image"], source[i]["mask"], config.image_size)
    cert = certify.certify_image(f, variables, image.astype(np.float32), certify.image_key(0, i), n0=N0, n=N)
    scores = certify.score_certificate(cert, mask, [0.0, 12.0])
    print(f"{source[i]['name']}: certified {cert.certified.mean():.1%} of the pixels; certified accuracy "
          f"{scores['certified_accuracy'][0]:.3f} at radius 0, {scores['certified_accuracy'][1]:.3f} at radius 12; "
          f"median certified radius {scores['median_radius']:.1f}")
    shown = np.where(cert.certified, cert.classes, 0.5)  # grey where it abstains
    pictures = [(image, "image", {}), (mask, "ground truth", {"cmap": "gray"}),
                (shown, "certified map (grey: abstain)", {"cmap": "gray", "vmin": 0, "vmax": 1}),
                (cert.radius, "certified L2 radius (0..255 scale)", {"cmap": "viridis"})]
    for ax, (picture, title, style) in zip(row, pictures):
        shown_image = ax.imshow(picture, **style)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.colorbar(shown_image, ax=row[-1], fraction=0.046)
fig.tight_layout()
plt.show()"""),
]

NOTEBOOKS = {
    "01_quickstart.ipynb": QUICKSTART,
    "02_train_gpu.ipynb": TRAIN_GPU,
    "03_evaluate.ipynb": EVALUATE,
    "04_robustness.ipynb": ROBUSTNESS,
}


def build(cells) -> nbformat.NotebookNode:
    notebook = new_notebook(
        cells=cells,
        metadata={
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
            "accelerator": "GPU",
            "colab": {"provenance": []},
        },
    )
    for i, cell in enumerate(notebook.cells):  # stable ids: regenerating gives the same file
        cell["id"] = f"cell-{i:02d}"
    nbformat.validate(notebook)
    return notebook


def render(cells) -> str:
    return nbformat.writes(build(cells)) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    stale = []
    for name, cells in NOTEBOOKS.items():
        path, text = HERE / name, render(cells)
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date (run python notebooks/make_notebooks.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
