"""robustness.attacks.square (Square Attack, score-based: forward passes only) and `robustness.evaluate --distortion
square-linf | square-l2`, with a checkpoint and with a black-box --predictor."""

import json
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from robustness import attacks


def toy_map(params, x):
    """A per-pixel logistic map of the colour channels (NumPy: a black box to the attack)."""
    logits = np.einsum("nhwc,c->nhw", np.asarray(x, np.float64) / 255.0 - 0.5, params["w"]) * 6.0 + params["b"]
    return 1.0 / (1.0 + np.exp(-logits))


TOY = {"w": np.array([1.0, -0.5, 0.8]), "b": 0.1}


def _batch(seed=0, shape=(3, 16, 16)):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (*shape, 3)).astype(np.float32)
    x[0, :2] = 0.0  # entries at the pixel range's ends
    x[1, :2] = 255.0
    return x, (rng.random(shape) < 0.5).astype(np.float32)


def _loss(x, y):
    return np.asarray(attacks.map_loss(jnp.asarray(toy_map(TOY, x)), jnp.asarray(y)))


@pytest.mark.parametrize("norm", attacks.NORMS)
def test_square_stays_in_the_budget_and_beats_random_noise_of_the_same_size(norm):
    x, y = _batch()
    eps = 8.0 if norm == "linf" else 400.0
    adv, loss, history = attacks.square(toy_map, TOY, x, y, eps=eps, norm=norm, queries=300)
    assert adv.dtype == np.float32 and adv.min() >= 0.0 and adv.max() <= 255.0
    delta = (adv.astype(np.float64) - x).reshape(len(x), -1)
    size = np.abs(delta).max(1) if norm == "linf" else np.linalg.norm(delta, axis=1)
    assert np.all(size <= eps * (1 + 1e-6) + 1e-3)
    np.testing.assert_allclose(loss, _loss(adv, y), rtol=1e-5)
    # The record: each image's best loss after each query, never falling, ending at the returned loss.
    assert history.shape == (300, len(x)) and np.all(np.diff(history, axis=0) >= 0)
    np.testing.assert_allclose(history[-1], loss, rtol=1e-6)
    # The model has known weak directions: the search finds far more than a random perturbation of the same size.
    rng = np.random.default_rng(1)
    noise = rng.choice([-eps, eps], x.shape) if norm == "linf" else rng.normal(size=x.shape)
    if norm == "l2":
        noise *= eps / np.linalg.norm(noise.reshape(len(x), -1), axis=1)[:, None, None, None]
    clean, random = _loss(x, y), _loss(np.clip(x + noise, 0, 255), y)
    assert np.all(loss - clean > 3 * np.abs(random - clean)), (loss - clean, random - clean)


def test_square_is_reproducible_and_a_zero_budget_is_the_clean_image():
    x, y = _batch(2)
    first = attacks.square(toy_map, TOY, x, y, eps=4.0, queries=50, seed=7)
    again = attacks.square(toy_map, TOY, x, y, eps=4.0, queries=50, seed=7)
    other = attacks.square(toy_map, TOY, x, y, eps=4.0, queries=50, seed=8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], other[0])
    adv, loss, history = attacks.square(toy_map, TOY, x, y, eps=0.0, queries=5)
    assert np.array_equal(adv, x) and np.array_equal(loss, _loss(x, y).astype(np.float32)) and history.shape == (5, 3)
    for bad in (dict(eps=-1.0), dict(eps=1.0, queries=0), dict(eps=1.0, norm="l1")):
        with pytest.raises(ValueError):
            attacks.square(toy_map, TOY, x, y, **bad)


@pytest.mark.parametrize("norm", attacks.NORMS)
def test_integer_candidates_stay_whole_pixel_levels_within_the_budget(norm):
    """For a model that takes uint8 images every candidate is rounded towards the clean image: whole levels, and
    the budget holds (a non-integer L-inf budget rounds down)."""
    x, y = _batch(3)
    eps = 4.5 if norm == "linf" else 300.0
    adv, loss, _ = attacks.square(toy_map, TOY, x, y, eps=eps, norm=norm, queries=300, integer=True)
    assert np.array_equal(adv, np.round(adv))
    delta = (adv.astype(np.float64) - x).reshape(len(x), -1)
    assert np.all((np.abs(delta).max(1) if norm == "linf" else np.linalg.norm(delta, axis=1)) <= eps)
    assert np.all(loss > _loss(x, y))


PREDICTOR = '''
import numpy as np

def predict(images):
    """A black box: the per-pixel logistic map of the colour channels, at each image's size."""
    x = np.stack([np.asarray(i, np.float64) for i in images])
    logits = np.einsum("nhwc,c->nhw", x / 255.0 - 0.5, np.array([1.0, -0.5, 0.8])) * 6.0 + 0.1
    return list(1.0 / (1.0 + np.exp(-logits)))
'''


def test_cli_square_on_a_predictor_and_a_checkpoint(shared_data, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    """square-linf through robustness.evaluate: a --predictor (forward passes only) and a checkpoint; the budget-0
    level is the clean score, the attacked score is lower, the convergence record is written; one-line errors."""
    from robustness.evaluate import main

    (tmp_path / "toy_black_box.py").write_text(PREDICTOR)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("toy_black_box", None)
    common = ["--data-dir", str(shared_data / "ECSSD"), "--limit", "3", "--batch-size", "2", "--no-progress"]
    common += ["--seeds", "1", "--levels", "0", "16"]
    square = ["--distortion", "square-linf", "--queries", "40"]
    black_box = ["--predictor", "toy_black_box:predict", "--input-size", "64"]
    assert main([*common, *square, *black_box, "--output", str(tmp_path / "bb")]) == 0
    run = json.loads((tmp_path / "bb" / "robustness.json").read_text())
    assert (run["attack"], run["steps"], run["attacked_maps"]) == ("square", 40, ["map"])
    levels = run["datasets"]["ECSSD"]
    assert levels["16.0"]["attack_loss"]["map"] > levels["0.0"]["attack_loss"]["map"]
    assert levels["16.0"]["raw"]["map"]["mae"] > levels["0.0"]["raw"]["map"]["mae"]
    curve = levels["16.0"]["loss_per_query"]["map"]
    assert len(curve) == 40 and curve[-1] == pytest.approx(levels["16.0"]["attack_loss"]["map"], rel=1e-4)
    assert (tmp_path / "bb" / "convergence.png").stat().st_size > 0
    assert main([*common, *square, "--checkpoint", str(tiny_checkpoint), "--output", str(tmp_path / "net")]) == 0
    net = json.loads((tmp_path / "net" / "robustness.json").read_text())["datasets"]["ECSSD"]
    assert net["16.0"]["attack_loss"]["ce"] >= net["0.0"]["attack_loss"]["ce"]
    capsys.readouterr()
    for args, message in (
        (["--distortion", "apgd-linf", *black_box], "error: --distortion apgd-linf needs --checkpoint"),
        ([*square, "--predictor", "toy_black_box:predict"], "with --predictor needs --input-size"),
        (["--distortion", "square-linf", "--queries", "0", *black_box], "--queries must be >= 1, got 0"),
        (["--distortion", "awgn", "--queries", "9", *black_box], "--queries is for --distortion square-linf / "),
    ):
        assert main([*common, *args, "--output", str(tmp_path / "no")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
