"""The autoencoder experiment's presets and references as settings resolve them, the VAE's
test noise, and the RBMs' kinds of hidden unit: nothing here trains."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import autoencoders
from lib.autoencoders import nets, rbm
from lib.autoencoders import train as train_lib
from lib.core import steps


def reference(**overrides):
    return autoencoders.reference(autoencoders.resolve(overrides))


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"model": "deep"}, 3.00),
        ({"model": "deep", "pretrain_epochs": 10}, 3.00),  # fewer epochs, still pretrained
        ({"model": "deep", "pretrain_epochs": 0}, None),  # the paper's 3.00 is pretrained
        ({"model": "dbn_classifier"}, 0.012),
        ({"model": "dbn_classifier", "pretrain_epochs": 0}, None),
        ({"model": "random_classifier"}, 0.016),
        ({"model": "random_classifier", "pretrain_epochs": 50}, None),  # no longer random
        ({"model": "deep_random", "pretrain_epochs": 50}, None),
        ({"model": "deep", "layers": (1000, 500, 250, 2)}, None),
        ({"model": "deep", "dataset": "fashion_mnist"}, None),
        ({"model": "pca"}, 13.87),
        ({"model": "vae"}, 104.0),
        ({"model": "vae", "pretrain_epochs": 5}, 104.0),
        ({"model": "vae", "layers": (500, 2)}, None),
    ],
)
def test_a_published_number_stands_beside_the_net_and_start_it_was_published_for(
    overrides, expected
):
    found = reference(**overrides)
    assert (found and found[0]) == expected


def test_the_random_classifiers_number_is_not_credited_to_this_net():
    value, source = reference(model="random_classifier")
    assert value == 0.016 and "other nets" in source and "best published" in source


@pytest.mark.parametrize("model", ["vae", "denoising"])
def test_models_that_are_not_pretrained_record_no_pretraining(model):
    config = autoencoders.resolve({"model": model, "pretrain_epochs": 5})
    assert config.pretrain_epochs == 0


@pytest.mark.parametrize("model", ["deep", "codes2d", "dbn_classifier", "random_classifier"])
def test_the_pretrained_nets_take_the_pretraining_asked_for(model):
    assert autoencoders.resolve({"model": model, "pretrain_epochs": 7}).pretrain_epochs == 7


@pytest.fixture(scope="module")
def small_vae():
    net = nets.VAE(latent=2, n_hidden=3, n_visible=4)
    params = net.init(jax.random.key(0), jnp.zeros((1, 4)), jax.random.key(1))["params"]
    return net, params


def test_the_vaes_test_noise_differs_from_chunk_to_chunk_and_not_with_the_chunking(small_vae):
    """The same image in every row: each row's sample of z is its own, so no two chunks
    score alike, and an image's score does not depend on the chunk size."""
    net, params = small_vae
    xs = jnp.tile(jnp.array([[1.0, 0.0, 1.0, 0.0]]), (6, 1))
    rows = jnp.arange(6)
    score = jax.jit(lambda x, r: autoencoders.vae_scores(net, params, x, r, seed=0))
    by_two = np.asarray(steps.batched(score, xs, rows, batch_size=2))
    assert len(set(by_two.tolist())) == 6, by_two
    np.testing.assert_allclose(steps.batched(score, xs, rows, batch_size=4), by_two, rtol=1e-6)
    np.testing.assert_allclose(score(xs, rows), by_two, rtol=1e-6)


def test_per_example_reconstruction_losses_are_the_nets_losses_per_image():
    logits = jax.random.normal(jax.random.key(2), (5, 4))
    xs = jax.random.uniform(jax.random.key(3), (5, 4))
    for loss in (nets.squared_error, nets.cross_entropy):
        per_image = autoencoders._per_example(loss, logits, xs)
        assert per_image.shape == (5,)
        np.testing.assert_allclose(per_image[1], loss(logits[1:2], xs[1:2]), rtol=1e-6)
        np.testing.assert_allclose(jnp.mean(per_image), loss(logits, xs), rtol=1e-6)


def test_an_unknown_kind_of_hidden_unit_is_refused():
    state = rbm.init(jax.random.key(0), 4, 3)
    v = jnp.zeros((2, 4))
    with pytest.raises(ValueError, match="'Linear' are unknown; choose from binary, linear"):
        rbm.cd1_update(state, v, jax.random.key(1), 0.1, 0.5, hidden="Linear")
    with pytest.raises(ValueError, match="choose from binary, linear"):
        rbm.hidden_mean(state.params, v, "gaussian")


def test_pretraining_refuses_an_unknown_hidden_unit_before_training_any_rbm(tmp_path):
    with pytest.raises(ValueError, match="'binry' are unknown"):
        train_lib.pretrain(
            jnp.zeros((4, 4)), [4, 3, 2], ["binary", "binry"], [0.1, 0.1], 1, 2, 0.0, 0,
            tmp_path / "pretrain",
        )  # fmt: skip
    assert not (tmp_path / "pretrain").exists()
