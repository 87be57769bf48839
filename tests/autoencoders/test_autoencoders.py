"""Autoencoders and deep belief nets: CD-1 learns, the losses' gradients match finite
differences, PCA's error is its discarded variance, the unrolled net has the paper's shape,
the VAE's bound falls, a short MNIST run beats PCA, and the command resumes after SIGKILL
and refuses bad flags in one line."""

import json
import math
import time
from itertools import pairwise

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from commands import run_module, start_module

from lib.autoencoders import logistic_pca, nets, pca, rbm
from lib.core import steps
from lib.core.errors import ConfigError, UserError


def bars(n: int, side: int = 4, seed: int = 0) -> np.ndarray:
    """n binary side x side images, each one random horizontal or vertical bar, flattened."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, side, side), np.float32)
    for image, vertical, k in zip(images, rng.random(n) < 0.5, rng.integers(side, size=n),
                                  strict=True):  # fmt: skip
        if vertical:
            image[:, k] = 1
        else:
            image[k, :] = 1
    return images.reshape(n, -1)


@pytest.mark.parametrize("hidden, learning_rate", [("binary", 0.1), ("linear", 0.01)])
def test_cd1_lowers_an_rbms_reconstruction_error(hidden, learning_rate):
    v = jnp.asarray(bars(200))
    state = rbm.init(jax.random.key(0), 16, 8)
    update = jax.jit(lambda s, x, k: rbm.cd1_update(s, x, k, learning_rate, 0.5, 0.0002, hidden))
    before = float(rbm.reconstruction_error(state.params, v, hidden))
    for step in range(300):
        batch = v[(step % 10) * 20 : (step % 10 + 1) * 20]
        state, _ = update(state, batch, jax.random.key(step))
    after = float(rbm.reconstruction_error(state.params, v, hidden))
    assert after < 0.5 * before, (before, after)


def directional_check(loss, params, seed=0, eps=1e-5):
    """The gradient of `loss` along a random direction against a central difference."""
    rng = np.random.default_rng(seed)
    direction = jax.tree.map(lambda p: rng.normal(size=p.shape), params)

    @jax.jit
    def both(params, direction):
        along = lambda t: jax.tree.map(lambda p, d: p + t * d, params, direction)
        gradient = jax.grad(loss)(params)
        analytic = sum(
            jnp.vdot(g, d)
            for g, d in zip(jax.tree.leaves(gradient), jax.tree.leaves(direction), strict=True)
        )
        return analytic, (loss(along(eps)) - loss(along(-eps))) / (2 * eps)

    analytic, numeric = both(params, direction)
    assert float(analytic) == pytest.approx(float(numeric), rel=1e-6, abs=1e-8)


def test_the_losses_gradients_match_finite_differences():
    with jax.enable_x64(True):
        x = jnp.asarray(bars(6, side=3), jnp.float64) * 0.8 + 0.1
        key = jax.random.key(1)
        to64 = lambda p: jax.tree.map(lambda a: np.asarray(a, np.float64), p)

        ae = nets.Autoencoder((5, 2), n_visible=9)
        p = to64(jax.jit(ae.init)(key, x)["params"])
        directional_check(lambda p: nets.cross_entropy(ae.apply({"params": p}, x), x), p)

        dae = nets.DenoisingAutoencoder(4, n_visible=9)
        p = to64(jax.jit(dae.init)(key, x)["params"])
        noisy = nets.mask(jax.random.key(2), x, 0.25)
        directional_check(lambda p: nets.cross_entropy(dae.apply({"params": p}, noisy), x), p)

        vae = nets.VAE(latent=2, n_hidden=5, n_visible=9)
        p = to64(jax.jit(vae.init)(key, x, key)["params"])
        binary = (x > 0.5).astype(jnp.float64)

        def elbo(p):
            logits, mean, log_variance = vae.apply({"params": p}, binary, jax.random.key(3))
            return nets.negative_elbo(logits, binary, mean, log_variance)[0]

        directional_check(elbo, p)


def test_the_papers_number_stands_beside_the_papers_net_only(tmp_path):
    from experiments import autoencoders

    config = {"model": "pca", "train_size": 200, "test_size": 100}
    summary = autoencoders.run(config, str(tmp_path / "30"), verbose=False)
    assert summary["reference"] == 13.87
    summary = autoencoders.run({**config, "layers": (10,)}, str(tmp_path / "10"), verbose=False)
    assert "reference" not in summary


def test_pca_error_is_the_sum_of_the_discarded_variances():
    rng = np.random.default_rng(0)
    x = (
        rng.normal(size=(500, 12))
        * np.linspace(3, 0.2, 12)
        @ np.linalg.qr(rng.normal(size=(12, 12)))[0]
        + 5.0
    )
    fitted = pca.fit(x, 4)
    assert pca.squared_error(fitted, x) == pytest.approx(fitted.variances[4:].sum(), rel=1e-9)
    # The same subspace as the SVD of the centred data.
    _, _, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    np.testing.assert_allclose(
        fitted.components.T @ fitted.components, vt[:4].T @ vt[:4], atol=1e-9
    )
    assert pca.squared_error(pca.fit(x, 12), x) == pytest.approx(0.0, abs=1e-9)
    # Fewer rows than columns (the SVD's branch): the covariance's eigenvalues and subspace.
    wide = rng.normal(size=(20, 50)) * np.linspace(2, 0.1, 50)
    fitted = pca.fit(wide, 5)
    centred = wide - wide.mean(0)
    eigenvalues, vectors = np.linalg.eigh(centred.T @ centred / 20)
    np.testing.assert_allclose(fitted.variances, np.clip(eigenvalues[::-1], 0, None), atol=1e-9)
    top = vectors[:, ::-1][:, :5]
    np.testing.assert_allclose(fitted.components.T @ fitted.components, top @ top.T, atol=1e-9)
    assert pca.squared_error(fitted, wide) == pytest.approx(fitted.variances[5:].sum(), rel=1e-9)


def test_logistic_pca_recovers_low_rank_logits_that_pca_cannot():
    # Pixels that are the probabilities of rank-3 logits: three logistic components fit
    # them, held-out rows included; three linear ones cannot follow the sigmoid's bends.
    rng = np.random.default_rng(0)
    components = rng.normal(size=(3, 40)) * 1.5
    truth = lambda n: 1 / (1 + np.exp(-(rng.normal(size=(n, 3)) @ components + 0.5)))
    x, held_out = truth(400).astype(np.float32), truth(100).astype(np.float32)
    model, codes, losses = logistic_pca.fit(x, 3, steps=400, learning_rate=0.05)
    losses = np.asarray(losses)
    assert losses[-1] < losses[0] and np.all(np.diff(losses[100:]) <= 1e-3), losses[::50]
    ours = logistic_pca.squared_error(model, codes, x)
    linear = pca.squared_error(pca.fit(x, 3), x)
    assert ours < linear / 5, (ours, linear)
    unseen = logistic_pca.squared_error(
        model, logistic_pca.encode(model, held_out, 400, 0.05), held_out
    )
    assert unseen < linear / 5, (unseen, linear)
    with pytest.raises(ValueError, match=r"k must be in \[1, 40\], got 41"):
        logistic_pca.fit(x, 41)


def test_the_unrolled_autoencoder_is_the_papers_784_1000_500_250_30_net():
    sizes = (784, *nets.PAPER_AUTOENCODER)
    hiddens = ("binary", "binary", "binary", "linear")
    rng = np.random.default_rng(0)
    stack = [
        rbm.Params(*(rng.normal(0, 0.1, s).astype(np.float32) for s in ((a, b), (a,), (b,))))
        for a, b in pairwise(sizes)
    ]
    params = nets.unroll(stack)
    net = nets.Autoencoder()
    shapes = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 784)))["params"]
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(lambda s: s.shape, shapes)
    assert [params[f"encoder_{i}"]["kernel"].shape for i in range(4)] == [
        (784, 1000), (1000, 500), (500, 250), (250, 30)]  # fmt: skip
    weights = 2 * (784 * 1000 + 1000 * 500 + 500 * 250 + 250 * 30)
    biases = (1000 + 500 + 250 + 30) + (784 + 1000 + 500 + 250)
    count = sum(a.size for a in jax.tree.leaves(params))
    assert count == weights + biases == 2_837_314
    # Unrolled, the encoder is the RBMs' up-pass and the decoder their down-pass.
    x = jnp.asarray(np.random.default_rng(0).random((3, 784)), jnp.float32)
    code = jax.jit(lambda p, x: net.apply({"params": p}, x, method=nets.Autoencoder.encode))(
        params, x
    )
    up = jax.jit(lambda x: rbm.up_pass(stack, x, hiddens))(x)
    np.testing.assert_allclose(code, up, rtol=1e-4, atol=1e-4)

    @jax.jit
    def down_pass(h):
        for layer in reversed(stack):
            h = rbm.visible_mean(layer, h)
        return h

    down = down_pass(code)
    logits = jax.jit(net.apply)({"params": params}, x)
    np.testing.assert_allclose(jax.nn.sigmoid(logits), down, rtol=1e-4, atol=1e-5)
    # Fine-tuning unties them: the first encoder layer and the last decoder layer start
    # as one matrix (transposed) and are then moved by gradients of their own.
    np.testing.assert_array_equal(params["encoder_0"]["kernel"].T, params["decoder_3"]["kernel"])
    grads = jax.jit(jax.grad(lambda p: nets.cross_entropy(net.apply({"params": p}, x), x)))(params)
    apart = jnp.abs(grads["encoder_0"]["kernel"].T - grads["decoder_3"]["kernel"])
    assert float(apart.max()) > 1e-3 * float(jnp.abs(grads["decoder_3"]["kernel"]).max())


def test_the_vaes_elbo_is_a_lower_bound_that_importance_weighting_tightens():
    x = jnp.asarray(bars(256))
    vae = nets.VAE(latent=2, n_hidden=32, n_visible=16)
    params = jax.jit(vae.init)(jax.random.key(0), x, jax.random.key(0))["params"]

    def loss(params, batch, key):
        logits, mean, log_variance = vae.apply({"params": params}, batch[0], key)
        value, kl = nets.negative_elbo(logits, batch[0], mean, log_variance)
        return value, {"kl": kl}

    def bound(params):
        return float(jax.jit(loss)(params, (x,), jax.random.key(9))[0])

    tx = optax.adam(1e-2)
    batches = steps.Batches(len(x), 32, seed=0)
    step = steps.make_step(loss, tx, (x,), batches, seed=0)
    state = steps.TrainState(params, tx.init(params))
    before = bound(params)
    losses = []
    for i in range(320):
        state, metrics = step(state, i)
        losses.append(float(metrics["loss"]))
    after = bound(state.params)
    assert np.mean(losses[-20:]) < np.mean(losses[:20])
    # Each pixel 1/2 whatever the image costs 16 ln 2 = 11.1 nats; the bars hold 3 bits.
    assert after < 0.6 * 16 * math.log(2) < before, (before, after)

    # The ELBO bounds log p(x) from below, and importance weighting tightens it: with a
    # 2-d latent, log p(x) = log of the integral of p(x|z) p(z) over z, summed on a grid.
    params = state.params
    grid = jnp.linspace(-6, 6, 241)
    z = jnp.stack(jnp.meshgrid(grid, grid), -1).reshape(-1, 2)
    logits = jax.jit(lambda z: vae.apply({"params": params}, z, method=nets.VAE.decode))(z)
    # log p(x|z) summed over pixels: x * logits - softplus(logits), for every (z, x) pair.
    log_joint = logits @ x.T - jnp.sum(jax.nn.softplus(logits), 1, keepdims=True)
    log_joint += (-0.5 * jnp.sum(z**2, 1) - jnp.log(2 * jnp.pi))[:, None]
    log_px = jax.nn.logsumexp(log_joint, axis=0) + 2 * jnp.log(grid[1] - grid[0])

    weights = jax.jit(nets.importance_log_weights, static_argnums=(0, 4))(
        vae, params, x, jax.random.key(1), 1000
    )
    one = float(weights.mean())  # single-sample bounds, whose mean is the ELBO
    many = [float(nets.importance_weighted_bound(weights[:k]).mean()) for k in (10, 100, 1000)]
    keys = jax.random.split(jax.random.key(2), 200)
    elbo = -float(jax.jit(jax.vmap(lambda key: loss(params, (x,), key)[0]))(keys).mean())
    truth = float(log_px.mean())
    assert abs(one - elbo) < 0.05, (one, elbo)
    assert elbo < many[0] < many[2] <= truth + 1e-3, (elbo, many, truth)
    assert many[0] <= many[1] + 1e-3 and many[1] <= truth + 1e-3, (many, truth)
    assert truth - many[2] < 0.5 * (truth - elbo), (elbo, many, truth)


def test_a_short_mnist_run_learns_what_independent_pixels_cannot(tmp_path):
    """A VAE trained for a few hundred steps on 1,000 binarised digits bounds their
    likelihood far above the best model that ignores how pixels go together: each pixel
    Bernoulli with its frequency in the training images."""
    from experiments import autoencoders
    from lib.core import data

    summary = autoencoders.run(
        {"model": "vae", "layers": (128, 8), "train_size": 1000, "test_size": 500,
         "epochs": 3, "batch_size": 20, "learning_rate": 3e-3},
        str(tmp_path), verbose=False,
    )  # fmt: skip
    splits = data.mnist(train_size=1000, order="book")
    train = autoencoders._binary(splits.train.images.reshape(1000, -1), "sample", 0)
    test = autoencoders._binary(splits.test.images[:500].reshape(500, -1), "sample", 1)
    p = np.clip(train.mean(0), 1e-3, 1 - 1e-3)
    independent = -np.mean(np.sum(test * np.log(p) + (1 - test) * np.log(1 - p), axis=1))
    assert summary["test_negative_elbo"] < independent - 20, (summary, independent)
    assert (tmp_path / "samples.png").stat().st_size > 5_000


@pytest.mark.parametrize(
    "model, layers, pictures",
    [
        ("pca", (2,), ("reconstructions.png",)),
        ("logistic_pca", (2,), ("reconstructions.png",)),
        ("vae", (32, 2), ("samples.png", "manifold.png", "reconstructions.png")),
        ("dbn_classifier", (32, 16), ("rbm_filters.png",)),
        ("deep", (32, 8), ("reconstructions.png", "rbm_filters.png")),
        ("denoising", (32,), ("reconstructions.png", "filters.png")),
    ],
)
def test_every_kind_of_model_runs_lowers_its_loss_and_draws(tmp_path, model, layers, pictures):
    from experiments import autoencoders

    summary = autoencoders.run(
        {"model": model, "layers": layers, "train_size": 200, "test_size": 200, "epochs": 3,
         "batch_size": 50, "pretrain_epochs": 1},
        str(tmp_path), verbose=False,
    )  # fmt: skip
    if model != "pca":  # closed form: nothing to lower
        lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
        name = "train_cross_entropy" if model == "logistic_pca" else "train_loss"
        losses = [line[name] for line in lines]
        assert len(losses) == 3 and losses[-1] < losses[0], losses
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["device"].endswith("x1") and saved["wall_time_s"] > 0
    reported = {"pca": "test_squared_error", "logistic_pca": "test_squared_error",
                "deep": "test_squared_error", "denoising": "test_squared_error",
                "vae": "test_negative_elbo", "dbn_classifier": "test_error"}[model]  # fmt: skip
    assert math.isfinite(summary[reported]) and saved[reported] == summary[reported]
    for picture in pictures:
        assert (tmp_path / picture).stat().st_size > 3_000, picture
    assert "reference" not in saved  # the papers' numbers are for their nets, not these
    if model == "dbn_classifier":
        assert [p.name for p in sorted((tmp_path / "pretrain").iterdir())] == ["rbm_0", "rbm_1"]


TINY = {"model": "codes2d", "layers": (32, 2), "train_size": 300, "test_size": 200,
        "batch_size": 20, "pretrain_batch_size": 20, "pretrain_epochs": 3, "epochs": 4}  # fmt: skip
TINY_FLAGS = [
    f"--{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in TINY.items()
]


def outcome(workdir):
    """What a finished run computed: its summary's numbers and every loop's metrics, less
    the timings."""
    summary = json.loads((workdir / "summary.json").read_text())
    kept = {k: v for k, v in summary.items() if k.startswith("test_") or k == "final_train_loss"}
    lines = {}
    for path in sorted(workdir.rglob("metrics.jsonl")):
        entries = [json.loads(x) for x in path.read_text().splitlines()]
        lines[str(path.relative_to(workdir))] = [
            {k: v for k, v in e.items() if k not in ("epoch_time_s", "examples_per_s")}
            for e in entries
        ]
    return kept, lines


def test_a_run_killed_during_pretraining_resumes_to_the_uninterrupted_result(tmp_path):
    from experiments import autoencoders

    autoencoders.run(TINY, str(tmp_path / "whole"), verbose=False)
    split = tmp_path / "split"
    killed = start_module("experiments.autoencoders", *TINY_FLAGS, f"--workdir={split}")
    second = split / "pretrain" / "rbm_1" / "checkpoints"
    deadline = time.monotonic() + 120
    while killed.poll() is None and not (
        second.is_dir() and any(p.name.isdigit() for p in second.iterdir())
    ):
        assert time.monotonic() < deadline, "the second RBM took too long to start"
        time.sleep(0.01)
    killed.kill()
    killed.wait()
    assert not (split / "summary.json").exists()  # killed while pretraining
    resumed = run_module("experiments.autoencoders", *TINY_FLAGS, f"--workdir={split}")
    assert resumed.returncode == 0, resumed.stderr
    assert "RBM 1/2 (784-32): resuming at step 45" in resumed.stdout
    assert outcome(split) == outcome(tmp_path / "whole")
    for picture in ("codes2d.png", "rbm_filters.png", "reconstructions.png"):
        assert (split / picture).stat().st_size > 3_000, picture
    with pytest.raises(UserError, match="holds a run with other settings: layers="):
        autoencoders.run({**TINY, "layers": (32, 3)}, str(split), verbose=False)


def test_a_bad_flag_is_one_line_and_writes_nothing(tmp_path):
    done = run_module(
        "experiments.autoencoders",
        "--model=denoising",
        "--noise=1.5",
        f"--workdir={tmp_path / 'w'}",
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == ["error: --noise=1.5 must be in [0, 1)"], done.stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model": "vae", "layers": (500,)}, "--model=vae takes 2 widths"),
        ({"model": "pca", "layers": (800,)}, "at most 784 components"),
        ({"model": "logistic_pca", "layers": (30, 2)}, "--model=logistic_pca takes 1 width"),
        ({"model": "deep", "layers": (10, 0)}, "must be widths in [1, 100000]"),
        ({"model": "deep", "train_size": 50, "batch_size": 100}, "--batch_size=100 exceeds"),
        ({"model": "deep", "learning_rate": -1.0}, "--learning_rate=-1.0 must be > 0"),
    ],
)
def test_bad_settings_are_refused_before_any_work(tmp_path, overrides, message):
    from experiments import autoencoders

    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        autoencoders.run(overrides, str(tmp_path / "w"), verbose=False)
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("model", ["deep", "vae"])
def test_colour_images_of_another_dataset_train_and_draw(tmp_path, monkeypatch, model):
    """--dataset=cifar10's 32x32x3 images reach the nets (3,072 inputs) and the pictures,
    filters included."""
    from fake_tfds import colour_splits

    from experiments import autoencoders

    monkeypatch.setattr(autoencoders.data_lib, "load", lambda *a, **k: colour_splits())
    monkeypatch.setattr(autoencoders.data_lib, "training_size", lambda *a, **k: None)
    summary = autoencoders.run(
        {"dataset": "cifar10", "model": model, "layers": (16, 4),
         "epochs": 1, "batch_size": 32, "pretrain_epochs": 1, "pretrain_batch_size": 32},
        str(tmp_path), verbose=False,
    )  # fmt: skip
    assert summary["finished"] and "reference" not in summary  # MNIST's numbers only
    assert (tmp_path / "reconstructions.png").stat().st_size > 5_000
    if model == "deep":
        assert (tmp_path / "rbm_filters.png").stat().st_size > 5_000
    else:
        assert (tmp_path / "samples.png").stat().st_size > 5_000
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["dataset"] == "cifar10"
