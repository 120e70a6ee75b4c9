"""robustness.attacks: PGD budgets, pixel range, zero budget, loss increase on real images (tiny MEnet), and
`robustness.evaluate --distortion pgd-l2` on a tiny checkpoint."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from menet_datasets import FolderSource, resize_pair
from menet_jax.core.config import get_config
from robustness import attacks


def toy_map(params, x):
    """A per-pixel logistic map of the colour channels: smooth, and cheap to compile."""
    return jax.nn.sigmoid(jnp.einsum("nhwc,c->nhw", x / 255.0 - 0.5, params["w"]) * 6.0 + params["b"])


TOY = {"w": jnp.array([1.0, -0.5, 0.8]), "b": jnp.array(0.1)}


def _batch(seed=0, shape=(2, 8, 8)):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (*shape, 3)).astype(np.float32)
    x[0, :2] = 0.0  # entries at the pixel range's ends
    x[1, :2] = 255.0
    y = (rng.random(shape) < 0.5).astype(np.float32)
    return x, y


def _norms(delta):
    flat = np.asarray(delta, np.float64).reshape(len(delta), -1)
    return np.abs(flat).max(1), np.linalg.norm(flat, axis=1)


@pytest.mark.parametrize("norm", attacks.NORMS)
@pytest.mark.parametrize("random", [False, True])
def test_perturbation_stays_in_the_budget_and_the_pixel_range(norm, random):
    x, y = _batch()
    for eps in (1.0, 8.0, 40.0):
        start = attacks.random_start(x.shape, eps, norm, np.random.default_rng(3)) if random else None
        adv, loss = attacks.pgd(toy_map, TOY, x, y, eps=eps, norm=norm, steps=7, start=start)
        adv = np.asarray(adv)
        assert adv.min() >= 0.0 and adv.max() <= 255.0 and adv.dtype == np.float32
        linf, l2 = _norms(adv - x)
        assert np.all((linf if norm == "linf" else l2) <= eps * (1 + 1e-6) + 1e-3)
        clean = np.asarray(attacks.map_loss(toy_map(TOY, jnp.asarray(x)), jnp.asarray(y)))
        assert np.all(np.asarray(loss) > clean)
        np.testing.assert_allclose(loss, attacks.map_loss(toy_map(TOY, jnp.asarray(adv)), jnp.asarray(y)), rtol=1e-5)


def test_random_start_lies_in_the_ball():
    shape = (3, 4, 5, 3)
    linf, _ = _norms(attacks.random_start(shape, 2.0, "linf", np.random.default_rng(0)))
    _, l2 = _norms(attacks.random_start(shape, 2.0, "l2", np.random.default_rng(0)))
    assert np.all(linf <= 2.0) and np.all(l2 <= 2.0 + 1e-5) and np.all(l2 > 1.5)  # d = 60: radius ~ eps


def test_zero_budget_gives_the_clean_image_and_loss_exactly():
    x, y = _batch(1)
    for norm in attacks.NORMS:
        adv, loss = attacks.pgd(toy_map, TOY, x, y, eps=0.0, norm=norm)
        assert np.array_equal(np.asarray(adv), x)
        assert np.array_equal(
            np.asarray(loss), np.asarray(attacks.map_loss(toy_map(TOY, jnp.asarray(x)), jnp.asarray(y)))
        )
    result = attacks.pgd(toy_map, TOY, x, y, eps=2.0, steps=2)  # a named pair with a JSON form
    assert isinstance(result, attacks.AttackResult) and result.images.shape == x.shape
    assert json.loads(json.dumps(result.to_json()))["loss"] == pytest.approx(np.asarray(result.loss).tolist())
    with pytest.raises(ValueError):
        attacks.pgd(toy_map, TOY, x, y, eps=1.0, norm="l1")
    with pytest.raises(ValueError):
        attacks.pgd(toy_map, TOY, x, y, eps=-1.0)


def test_mae_loss_is_the_map_mae():
    m = jnp.array([[[0.2, 0.9]]])
    y = jnp.array([[[0.0, 1.0]]])
    assert float(attacks.map_loss(m, y, "mae")[0]) == pytest.approx(0.15)
    assert float(attacks.map_loss(m, y, "bce")[0]) == pytest.approx(-(np.log(0.8) + np.log(0.9)) / 2, rel=1e-5)


@pytest.fixture(scope="module")
def tiny_menet():
    from menet_jax.core.config import get_config
    from menet_jax.core.model import MEnet, init_variables

    config = get_config("tiny")
    model = MEnet.from_config(config)
    return model, init_variables(model, 0), config.image_size


def test_pgd_raises_the_loss_of_the_metric_map_on_real_images(shared_data, tiny_menet, monkeypatch):
    """Tiny MEnet (fresh weights) on two ECSSD images at its 32 px input: the normalised Eq. 5 map has a finite
    gradient (min-max and the distance are differentiable almost everywhere) and the L-inf attack raises its
    loss within the budget. (The CE probability under L2 on real images: the CLI test below.)"""
    from menet_jax.api import network_function

    model, variables, size = tiny_menet
    source = FolderSource(shared_data / "ECSSD")
    pairs = [resize_pair(source[i]["image"], source[i]["mask"], size) for i in (0, 1)]
    x = np.stack([p[0] for p in pairs]).astype(np.float32)
    y = np.stack([p[1] for p in pairs]).astype(np.float32)
    # The map robustness.evaluate attacks as "metric"; plain convolutions: quicker to compile, same function.
    f = network_function(dataclasses.replace(get_config("tiny"), conv="plain"), output="metric")
    clean, g = jax.jit(jax.value_and_grad(lambda z: attacks.map_loss(f(variables, z), jnp.asarray(y)).sum()))(
        jnp.asarray(x)
    )
    assert np.all(np.isfinite(np.asarray(g))) and np.abs(np.asarray(g)).max() > 0
    adv, loss = attacks.pgd(f, variables, x, y, eps=4.0, norm="linf", steps=5)
    assert float(np.sum(loss)) > float(clean) and np.all(np.asarray(loss) > 0)
    assert np.abs(np.asarray(adv) - x).max() <= 4.0 + 1e-3


def test_cli_pgd_l2_on_a_tiny_checkpoint(shared_data, tiny_checkpoint, tmp_path, capsys):
    from robustness.evaluate import main

    out = tmp_path / "pgd"
    common = [
        "--checkpoint",
        str(tiny_checkpoint),
        "--data-dir",
        str(shared_data / "ECSSD"),
        "--limit",
        "2",
        "--batch-size",
        "2",
        "--no-progress",
    ]
    assert (
        main(common + ["--distortion", "pgd-l2", "--levels", "0", "64", "--pgd-steps", "4", "--output", str(out)]) == 0
    )
    table = (out / "table.md").read_text()
    assert "pgd-l2 L2 budget (/255)" in table and "attacked loss (bce" in table
    report = json.loads((out / "robustness.json").read_text())
    assert report["norm"] == "l2" and report["attacked_maps"] == ["ce"] and "network input" in report["attack_space"]
    r = report["datasets"]["ECSSD"]
    assert list(r) == ["0.0", "64.0"]
    for level in r.values():
        assert 0 <= level["raw"]["ce"]["adp_f"] <= 1 and 0 <= level["normalised"]["ce"]["mae"] <= 1
    assert r["64.0"]["attack_loss"]["ce"] > r["0.0"]["attack_loss"]["ce"]
    capsys.readouterr()
    assert (
        main(
            [
                "--predictor",
                "x:y",
                "--data-dir",
                str(shared_data / "ECSSD"),
                "--distortion",
                "pgd-linf",
                "--output",
                str(tmp_path / "no"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error: --distortion pgd-linf needs --checkpoint") and err.count("\n") == 1
    assert main(common + ["--distortion", "jpeg", "--pgd-steps", "3", "--output", str(tmp_path / "no")]) == 2
    assert "--pgd-steps is for --distortion pgd-linf / pgd-l2" in capsys.readouterr().err
    assert main(common + ["--distortion", "pgd-linf", "--levels", "-1", "--output", str(tmp_path / "no")]) == 2
    assert "bad pgd-linf budget '-1'" in capsys.readouterr().err


def test_apgd_checkpoints_follow_the_paper():
    """p_j = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 (Croce and Hein 2020, Sec. 3.2) times the steps."""
    assert attacks.apgd_checkpoints(100)[:5] == (22, 41, 58, 70, 80)
    assert attacks.apgd_checkpoints(100)[-1] == 99 and len(attacks.apgd_checkpoints(100)) == 8


@pytest.mark.parametrize("norm", attacks.NORMS)
def test_apgd_stays_in_the_budget_and_beats_pgd_on_the_toy_map(norm):
    x, y = _batch(2, (3, 8, 8))
    eps = 8.0 if norm == "linf" else 200.0
    adv, loss = attacks.apgd(toy_map, TOY, x, y, eps=eps, norm=norm, steps=100, restarts=2)
    adv = np.asarray(adv)
    assert adv.min() >= 0.0 and adv.max() <= 255.0
    linf, l2 = _norms(adv - x)
    assert np.all((linf if norm == "linf" else l2) <= eps * (1 + 1e-6) + 1e-3)
    np.testing.assert_allclose(loss, attacks.map_loss(toy_map(TOY, jnp.asarray(adv)), jnp.asarray(y)), rtol=1e-5)
    _, pgd_loss = attacks.pgd(toy_map, TOY, x, y, eps=eps, norm=norm, steps=10)
    assert np.all(np.asarray(loss) >= np.asarray(pgd_loss) - 1e-6)
    # The same starts give the same result; a zero budget gives the clean image and loss exactly.
    again, _ = attacks.apgd(toy_map, TOY, x, y, eps=eps, norm=norm, steps=100, restarts=2)
    assert np.array_equal(np.asarray(again), adv)
    clean, clean_loss = attacks.apgd(toy_map, TOY, x, y, eps=0.0, norm=norm)
    assert np.array_equal(np.asarray(clean), x)
    assert np.array_equal(np.asarray(clean_loss), np.asarray(attacks.map_loss(toy_map(TOY, jnp.asarray(x)), y)))


def test_apgd_keeps_per_image_the_worst_restart():
    """Two restarts: the result's loss is, image by image, the larger of the two single-restart runs."""
    x, y = _batch(4, (3, 8, 8))
    starts = [attacks.random_start(x.shape, 6.0, "linf", np.random.default_rng(s)) for s in (1, 2)]
    single = [attacks.apgd(toy_map, TOY, x, y, eps=6.0, steps=12, starts=[s])[1] for s in starts]
    _, both = attacks.apgd(toy_map, TOY, x, y, eps=6.0, steps=12, starts=starts)
    np.testing.assert_array_equal(np.asarray(both), np.maximum(*map(np.asarray, single)))
    with pytest.raises(ValueError):
        attacks.apgd(toy_map, TOY, x, y, eps=1.0, restarts=0)


def test_apgd_record_is_each_images_best_point_so_far():
    """The convergence record: at iteration 0 the start, at the end of each restart that restart's result kept
    against the earlier ones, never decreasing, the last point the returned one; the same run without a record
    returns the same images; each recorded point's loss is its image's loss."""
    x, y = _batch(5, (3, 8, 8))
    starts = [attacks.random_start(x.shape, 6.0, "linf", np.random.default_rng(s)) for s in (1, 2)]
    assert attacks.apgd_record(12) == (0, 1, 2, 5, 10, 12) and attacks.apgd_record(100)[-3:] == (20, 50, 100)
    result = attacks.apgd(toy_map, TOY, x, y, eps=6.0, steps=12, starts=starts, record=attacks.apgd_record(12))
    plain = attacks.apgd(toy_map, TOY, x, y, eps=6.0, steps=12, starts=starts)
    np.testing.assert_array_equal(np.asarray(result.images), np.asarray(plain.images))
    assert result.iterations.tolist() == [0, 1, 2, 5, 10, 12, 12, 13, 14, 17, 22, 24]
    trace, trace_loss = np.asarray(result.trace), np.asarray(result.trace_loss)
    start = np.clip(x + starts[0], 0, 255)
    np.testing.assert_allclose(trace[0], start)  # iteration 0 of the first restart: its start
    single = [attacks.apgd(toy_map, TOY, x, y, eps=6.0, steps=12, starts=[s]) for s in starts]
    np.testing.assert_array_equal(trace[5], np.asarray(single[0].images))  # the first restart's result
    np.testing.assert_array_equal(trace[-1], np.asarray(result.images))
    assert np.all(np.diff(trace_loss, axis=0) >= 0)  # the best so far never gets worse
    np.testing.assert_allclose(trace_loss, [attacks.map_loss(toy_map(TOY, jnp.asarray(t)), y) for t in trace], 1e-5)
    assert np.abs(trace - x).max() <= 6.0 + 1e-3
    with pytest.raises(ValueError, match="0..12"):
        attacks.apgd(toy_map, TOY, x, y, eps=6.0, steps=12, record=(13,))


def test_apgd_is_at_least_as_strong_as_pgd_on_real_images(shared_data, tiny_menet):
    """Tiny MEnet (fresh weights) on four ECSSD images, the CE map under L-inf 4/255: APGD (30 steps, 2 restarts)
    reaches at least the loss of 10-step PGD on every image."""
    from menet_jax.api import network_function

    _, variables, size = tiny_menet
    source = FolderSource(shared_data / "ECSSD")
    pairs = [resize_pair(source[i]["image"], source[i]["mask"], size) for i in range(4)]
    x = np.stack([p[0] for p in pairs]).astype(np.float32)
    y = np.stack([p[1] for p in pairs]).astype(np.float32)
    f = network_function(dataclasses.replace(get_config("tiny"), conv="plain"), output="salient_prob")
    _, pgd_loss = attacks.pgd(f, variables, x, y, eps=4.0, norm="linf", steps=10)
    adv, apgd_loss = attacks.apgd(f, variables, x, y, eps=4.0, norm="linf", steps=30, restarts=2)
    assert np.all(np.asarray(apgd_loss) >= np.asarray(pgd_loss) - 1e-5), (apgd_loss, pgd_loss)
    assert np.abs(np.asarray(adv) - x).max() <= 4.0 + 1e-3


def test_cli_apgd_linf_on_a_tiny_checkpoint(shared_data, tiny_checkpoint, tmp_path, capsys):
    """apgd-linf through robustness.evaluate: the attack's settings recorded, the budget-0 level the clean score, and
    APGD's kept score no higher than 10-step PGD's at the same budget (same images, same tiny network)."""
    from robustness.evaluate import main

    common = ["--checkpoint", str(tiny_checkpoint), "--data-dir", str(shared_data / "ECSSD"), "--limit", "2"]
    common += ["--batch-size", "2", "--no-progress", "--seeds", "1", "--levels", "0", "8"]
    assert (
        main(
            [
                *common,
                "--distortion",
                "apgd-linf",
                "--pgd-steps",
                "12",
                "--restarts",
                "2",
                "--output",
                str(tmp_path / "apgd"),
            ]
        )
        == 0
    )
    assert main([*common, "--distortion", "pgd-linf", "--output", str(tmp_path / "pgd")]) == 0
    apgd = json.loads((tmp_path / "apgd" / "robustness.json").read_text())
    pgd = json.loads((tmp_path / "pgd" / "robustness.json").read_text())
    assert (apgd["attack"], apgd["steps"], apgd["restarts"], apgd["random_start"]) == ("apgd", 12, 2, True)
    assert (pgd["attack"], pgd["steps"], pgd["restarts"]) == ("pgd", 10, 1)
    a, b = apgd["datasets"]["ECSSD"], pgd["datasets"]["ECSSD"]
    assert a["0.0"]["raw"]["ce"] == b["0.0"]["raw"]["ce"]  # budget 0: both the clean images
    assert a["8.0"]["attack_loss"]["ce"] >= b["8.0"]["attack_loss"]["ce"] - 1e-6
    # The convergence record: F-beta of the best points after 0 .. 12 iterations of each of the 2 restarts; its last
    # point is the attacked score; a zero budget has none; convergence.png is drawn.
    record = a["8.0"]["fbeta_per_iteration"]
    assert record["iterations"] == [0, 1, 2, 5, 10, 12, 12, 13, 14, 17, 22, 24] and len(record["ce"]) == 12
    assert record["ce"][-1] == pytest.approx(a["8.0"]["normalised"]["ce"]["adp_f"], abs=1e-6)
    assert "fbeta_per_iteration" not in a["0.0"] and (tmp_path / "apgd" / "convergence.png").stat().st_size > 1000
    capsys.readouterr()
    assert main([*common, "--distortion", "apgd-linf", "--random-start", "--output", str(tmp_path / "x")]) == 2
    assert "--random-start is for --distortion pgd-linf / pgd-l2, not apgd-linf" in capsys.readouterr().err


def test_cospgd_weights_each_pixels_cross_entropy_by_its_cosine_similarity():
    """CosPGD's loss by hand, and its gradient: the cosine weight is held constant (no gradient through it)."""
    m = jnp.array([[[0.2, 0.9]]])
    y = jnp.array([[[0.0, 1.0]]])
    cosine = np.array([0.8 / np.hypot(0.2, 0.8), 0.9 / np.hypot(0.9, 0.1)])
    bce = -np.log([0.8, 0.9])
    assert float(attacks.map_loss(m, y, "cospgd")[0]) == pytest.approx(np.mean(cosine * bce), rel=1e-5)
    g = jax.grad(lambda v: attacks.map_loss(v, y, "cospgd").sum())(m)
    g_bce = jax.grad(lambda v: attacks.map_loss(v, y, "bce").sum())(m)
    np.testing.assert_allclose(np.asarray(g)[0, 0], cosine * np.asarray(g_bce)[0, 0], rtol=1e-5)
    x, y = _batch()
    # The weighted loss steers the steps; the BCE it aims to raise picks the best point and is returned.
    for attack in (attacks.pgd, attacks.apgd):
        adv, loss = attack(toy_map, TOY, x, y, eps=8.0, steps=5, loss="cospgd")
        assert np.abs(np.asarray(adv) - x).max() <= 8.0 + 1e-3
        np.testing.assert_allclose(loss, attacks.map_loss(toy_map(TOY, jnp.asarray(adv)), jnp.asarray(y)), rtol=1e-5)
        assert np.all(np.asarray(loss) > np.asarray(attacks.map_loss(toy_map(TOY, jnp.asarray(x)), jnp.asarray(y))))


def test_cli_ensemble_keeps_per_image_the_worst_loss(shared_data, tiny_checkpoint, tmp_path):
    """--pgd-loss ensemble: each image's score is the lower of the BCE and the CosPGD attack's (deterministic PGD
    without a random start, so the ensemble's candidates are exactly the single-loss runs' images)."""
    from robustness.evaluate import main

    common = ["--checkpoint", str(tiny_checkpoint), "--data-dir", str(shared_data / "ECSSD"), "--limit", "4"]
    common += ["--batch-size", "4", "--no-progress", "--seeds", "1", "--levels", "0", "8", "--distortion", "pgd-linf"]
    common += ["--pgd-steps", "3"]
    runs = {}
    for loss in ("bce", "cospgd", "ensemble"):
        assert main([*common, "--pgd-loss", loss, "--output", str(tmp_path / loss)]) == 0
        runs[loss] = json.loads((tmp_path / loss / "robustness.json").read_text())["datasets"]["ECSSD"]["8.0"]
    f = {loss: np.array(r["per_image"]["normalised"]["ce"]["adp_f"][0]) for loss, r in runs.items()}
    np.testing.assert_allclose(f["ensemble"], np.minimum(f["bce"], f["cospgd"]), atol=1e-6)
    assert sum(runs["ensemble"]["ensemble_worst"]["ce"].values()) == 4
