"""MEnet's structure: the authors' parameter count, every layer of the manifest, output shapes and modes."""

import re
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from menet_jax.core.config import PRESETS, get_config
from menet_jax.core.model import MEnet, count_parameters, init_variables, parameter_shapes

PAPER_PARAMETERS = 184_959_166


@pytest.fixture(scope="module")
def paper_model():
    return MEnet.from_config(PRESETS["paper"])


def test_paper_config_has_the_authors_parameter_count(paper_model):
    shapes = parameter_shapes(paper_model)
    assert count_parameters(shapes["params"]) == PAPER_PARAMETERS
    # BatchNorm running statistics are state, not trainable parameters: 25,109 means + 25,109 variances.
    assert count_parameters(shapes["batch_stats"]) == 50_218


def _model_layers(model):
    """Multiset of (op, C_in, C_out, H_out, k, params) from the kernels and the captured layer outputs."""
    x = jax.ShapeDtypeStruct((1, model.image_size, model.image_size, 3), jnp.float32)

    def run(x):
        variables = model.init(jax.random.key(0), x, train=False)
        _, state = model.apply(variables, x, train=False, capture_intermediates=True, mutable=["intermediates"])
        return variables["params"], state["intermediates"]

    params, inter = jax.eval_shape(run, x)
    layers = Counter()
    flat_params = jax.tree_util.tree_flatten_with_path(params)[0]
    outputs = {
        tuple(getattr(k, "key", k) for k in path[:-1]): leaf.shape
        for path, leaf in jax.tree_util.tree_flatten_with_path(inter)[0]
    }
    for path, leaf in flat_params:
        names = tuple(getattr(k, "key", k) for k in path)
        module = names[:-1]
        if names[-1] == "kernel":
            k, _, cin, cout = leaf.shape
            op = "deconv" if module[-1].startswith("ConvTranspose") else "conv"
            bias = 0 if op == "deconv" else cout
            out = outputs[module + ("__call__",)]
            layers[(op, cin, cout, out[1], k, leaf.size + bias)] += 1
        elif names[-1] == "scale":
            c = leaf.shape[0]
            layers[("bn", c, c, None, None, 2 * c)] += 1
    return layers


def _manifest_layers(text):
    layers = Counter()
    for row in text.splitlines():
        m = re.match(
            r"\|\s*\d+\s*\|\s*(conv|deconv|bn)\s*\|\s*(\d+)x(\d+)x(\d+)\s*\|\s*(\d+)x(\d+)x(\d+)\s*\|"
            r"\s*([\d ]*)\|[^|]*\|\s*([\d,]+)\s*\|",
            row,
        )
        if not m:
            continue
        op, cin, _, _, cout, hout, _, ksp, params = m.groups()
        params = int(params.replace(",", ""))
        if op == "bn":
            layers[("bn", int(cin), int(cout), None, None, params)] += 1
        else:
            layers[(op, int(cin), int(cout), int(hout), int(ksp.split()[0]), params)] += 1
    return layers


def test_every_layer_matches_the_manifest(paper_model, shared_docs):
    expected = _manifest_layers((shared_docs / "menet-layer-manifest.md").read_text())
    assert sum(expected.values()) == 61 + 11 + 72
    got = _model_layers(paper_model)
    assert got == expected, f"missing: {expected - got}, unexpected: {got - expected}"


def test_paper_forward_shapes(paper_model):
    x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    out = jax.eval_shape(lambda x: paper_model.init_with_output(jax.random.key(0), x, train=False)[0], x)
    assert out["features"].shape == (2, 224, 224, 16)
    assert out["logits"].shape == (2, 224, 224, 2)


def test_other_input_sizes_scale_the_bottleneck():
    model = MEnet(image_size=96, width=2)
    shapes = parameter_shapes(model)
    assert shapes["params"]["bottleneck_conv"]["Conv_0"]["kernel"].shape == (3, 3, 64, 64)
    assert shapes["params"]["bottleneck_deconv"]["ConvTranspose_0"]["kernel"].shape == (3, 3, 64, 64)


def test_tiny_model_modes_and_outputs():
    config = get_config("tiny")
    model = MEnet.from_config(config)
    variables = init_variables(model, 0)
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)), jnp.uint8)
    apply_train = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    apply_eval = jax.jit(lambda v, x: model.apply(v, x, train=False))
    out, updates = apply_train(variables, images)
    assert np.all(np.abs(out["features"]) <= 1.0)
    assert np.isfinite(out["logits"]).all()
    # Training mode updates the running statistics (momentum 0.999: a small but nonzero move).
    before = jax.tree_util.tree_leaves(variables["batch_stats"])
    after = jax.tree_util.tree_leaves(updates["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
    # Evaluation mode uses running statistics: one image's output does not depend on the rest of the batch.
    alone = apply_eval(variables, images[:1])
    together = apply_eval(variables, images)
    np.testing.assert_allclose(alone["logits"][0], together["logits"][0], rtol=1e-4, atol=1e-4)
    # ... while training mode uses batch statistics, so it does.
    alone_train, _ = apply_train(variables, images[:2])
    assert not np.allclose(alone_train["logits"][0], out["logits"][0], atol=1e-4)


def test_input_scaling_and_dtype_options():
    images = jnp.asarray(np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3)), jnp.uint8)
    raw = MEnet(image_size=32, width=4)
    variables = init_variables(raw, 0)
    normalized = MEnet(image_size=32, width=4, input_scale="normalized")
    # Same parameters, different input scaling: different outputs.
    a = jax.jit(raw.apply)(variables, images)["logits"]
    b = jax.jit(normalized.apply)(variables, images)["logits"]
    assert not np.allclose(a, b)
    half = MEnet(image_size=32, width=4, dtype=jnp.bfloat16)
    c = jax.jit(half.apply)(variables, images)
    assert c["logits"].dtype == jnp.float32
    assert np.isfinite(c["logits"]).all()


def test_wrong_input_shape_is_a_clear_error():
    model = MEnet(image_size=32, width=2)
    with pytest.raises(ValueError, match=r"expects \(N, 32, 32, 3\)"):
        model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))


def test_fast_init_has_the_tree_and_distributions_of_flax_init():
    model = MEnet(image_size=64, width=4)
    reference = parameter_shapes(model)
    variables = init_variables(model, seed=3)
    assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(reference)
    assert all(
        a.shape == b.shape and a.dtype == b.dtype
        for a, b in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(reference))
    )
    params = variables["params"]
    # Caffe xavier: uniform(+-sqrt(3 / fan)); fan_in for convs, C_out * k * k for transposed convs.
    conv = params["E1_down"]["BRC_0"]["Conv_0"]["kernel"]  # 3x3, 4 -> 8
    deconv = params["D0_up"]["BRC_0"]["ConvTranspose_0"]["kernel"]  # 4x4, 16 -> 4
    for kernel, bound in ((conv, (3 / (9 * 4)) ** 0.5), (deconv, (3 / (16 * 4)) ** 0.5)):
        assert 0.9 * bound < np.abs(kernel).max() <= bound
    assert np.all(params["E1_down"]["BRC_0"]["Conv_0"]["bias"] == 0)
    assert np.all(params["stem_bn"]["scale"] == 1) and np.all(params["stem_bn"]["bias"] == 0)
    assert np.all(variables["batch_stats"]["stem_bn"]["var"] == 1)
    # The Flax initializers of the layer modules draw from the same ranges.
    from menet_jax.core.layers import Conv, ConvTranspose

    x = jnp.zeros((1, 8, 8, 16))
    for layer, bound in ((Conv(4, 3), (3 / (9 * 16)) ** 0.5), (ConvTranspose(4, 4), (3 / (16 * 4)) ** 0.5)):
        kernel = layer.init(jax.random.key(0), x)["params"]["kernel"]
        assert 0.9 * bound < np.abs(kernel).max() <= bound
    # Seeded: the same seed gives the same parameters, another seed others.
    again = init_variables(model, seed=3)["params"]["E1_down"]["BRC_0"]["Conv_0"]["kernel"]
    other = init_variables(model, seed=4)["params"]["E1_down"]["BRC_0"]["Conv_0"]["kernel"]
    np.testing.assert_array_equal(conv, again)
    assert not np.allclose(conv, other)
