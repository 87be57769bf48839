"""The autoencoders, as Flax linen modules, and their losses.

- `Autoencoder`: the deep autoencoder of Hinton and Salakhutdinov, "Reducing the
  dimensionality of data with neural networks" (Science 2006): logistic layers down to a
  linear code (784-1000-500-250-30 for MNIST) and a mirrored decoder with logistic
  outputs, trained on the pixels' cross-entropy; `unroll` sets it from a stack of RBMs.
- `Classifier`: the same paper's 784-500-500-2000-10 net, logistic layers and a softmax,
  initialised from a deep belief net (`from_rbms`) or at random.
- `DenoisingAutoencoder`: Vincent, Larochelle, Bengio and Manzagol, "Extracting and
  composing robust features with denoising autoencoders" (ICML 2008): one logistic layer
  with tied weights, reconstructing clean inputs from inputs with a fraction masked to 0.
- `VAE`: Kingma and Welling, "Auto-encoding variational Bayes" (2013): a Gaussian encoder,
  a Bernoulli decoder, the negative ELBO by the reparameterisation trick;
  `importance_weighted_bound` (of `importance_log_weights`), the tighter k-sample bound of
  Burda, Grosse and Salakhutdinov ("Importance weighted autoencoders", 2015), to see how
  far below log p(x) the ELBO is.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from lib.autoencoders import rbm

MNIST_PIXELS = 784
PAPER_AUTOENCODER = (1000, 500, 250, 30)
PAPER_CLASSIFIER = (500, 500, 2000)


def flat(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1)


class Autoencoder(nn.Module):
    """Encoder widths `sizes` (the last is the linear code); the decoder mirrors them."""

    sizes: Sequence[int] = PAPER_AUTOENCODER
    n_visible: int = MNIST_PIXELS

    def setup(self):
        self.encoder = [nn.Dense(n) for n in self.sizes]
        widths = [*reversed(self.sizes[:-1]), self.n_visible]
        self.decoder = [nn.Dense(n) for n in widths]

    def encode(self, x: jax.Array) -> jax.Array:
        h = flat(x)
        for i, layer in enumerate(self.encoder):
            h = layer(h)
            if i < len(self.encoder) - 1:
                h = nn.sigmoid(h)
        return h

    def decode(self, code: jax.Array) -> jax.Array:
        """The reconstruction's logits (N, n_visible)."""
        h = code
        for i, layer in enumerate(self.decoder):
            h = layer(h)
            if i < len(self.decoder) - 1:
                h = nn.sigmoid(h)
        return h

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.decode(self.encode(x))


def unroll(stack: Sequence[rbm.Params]) -> dict:
    """The Autoencoder's parameters from a stack of RBMs, bottom first: encoder layer i has
    RBM i's weights and hidden biases, the decoder's mirror of it the transposed weights and
    visible biases (untied from then on, as in the paper). The arrays are copies, so that
    training may donate them."""
    n = len(stack)
    params = {}
    for i, layer in enumerate(stack):
        params[f"encoder_{i}"] = {"kernel": jnp.array(layer.w), "bias": jnp.array(layer.b_hidden)}
        params[f"decoder_{n - 1 - i}"] = {
            "kernel": jnp.array(layer.w.T),
            "bias": jnp.array(layer.b_visible),
        }
    return params


def cross_entropy(logits: jax.Array, x: jax.Array) -> jax.Array:
    """The reconstruction's cross-entropy, summed over pixels, averaged over examples."""
    return jnp.mean(jnp.sum(optax.sigmoid_binary_cross_entropy(logits, flat(x)), axis=1))


def squared_error(logits: jax.Array, x: jax.Array) -> jax.Array:
    """The paper's measure: squared error summed over pixels, averaged over examples."""
    return jnp.mean(jnp.sum((jax.nn.sigmoid(logits) - flat(x)) ** 2, axis=1))


class Classifier(nn.Module):
    """Logistic hidden layers of widths `sizes`, then `n_classes` logits."""

    sizes: Sequence[int] = PAPER_CLASSIFIER
    n_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = flat(x)
        for i, n in enumerate(self.sizes):
            h = nn.sigmoid(nn.Dense(n, name=f"hidden_{i}")(h))
        return nn.Dense(self.n_classes, name="output")(h)


def from_rbms(params: dict, stack: Sequence[rbm.Params]) -> dict:
    """The Classifier's `params` with its hidden layers set from a deep belief net (a stack
    of RBMs, bottom first); the output layer keeps its initialisation."""
    params = dict(params)
    for i, layer in enumerate(stack):
        params[f"hidden_{i}"] = {"kernel": jnp.array(layer.w), "bias": jnp.array(layer.b_hidden)}
    return params


def _tied_uniform(key, shape, dtype=jnp.float32):
    """Uniform in +-4 sqrt(6 / (fan_in + fan_out)): Glorot's range scaled for logistic units."""
    limit = 4.0 * jnp.sqrt(6.0 / sum(shape))
    return jax.random.uniform(key, shape, dtype, -limit, limit)


class DenoisingAutoencoder(nn.Module):
    """One logistic hidden layer of `n_hidden` units, the decoder's weights the encoder's
    transposed."""

    n_hidden: int = 500
    n_visible: int = MNIST_PIXELS

    def setup(self):
        self.w = self.param("w", _tied_uniform, (self.n_visible, self.n_hidden))
        self.b_hidden = self.param("b_hidden", nn.initializers.zeros, (self.n_hidden,))
        self.b_visible = self.param("b_visible", nn.initializers.zeros, (self.n_visible,))

    def encode(self, x: jax.Array) -> jax.Array:
        return nn.sigmoid(flat(x) @ self.w + self.b_hidden)

    def __call__(self, x: jax.Array) -> jax.Array:
        """The reconstruction's logits."""
        return self.encode(x) @ self.w.T + self.b_visible


def mask(key: jax.Array, x: jax.Array, fraction: float | jax.Array) -> jax.Array:
    """Vincent et al.'s masking noise: each input set to 0 with probability `fraction`."""
    return jnp.where(jax.random.uniform(key, x.shape) < fraction, 0.0, x)


class VAE(nn.Module):
    """Encoder and decoder of one ReLU layer of `n_hidden` units each; `latent` Gaussian
    latent variables with a standard normal prior; Bernoulli pixels."""

    latent: int = 20
    n_hidden: int = 500
    n_visible: int = MNIST_PIXELS

    def setup(self):
        self.hidden_in = nn.Dense(self.n_hidden)
        self.mean = nn.Dense(self.latent)
        self.log_variance = nn.Dense(self.latent)
        self.hidden_out = nn.Dense(self.n_hidden)
        self.pixels = nn.Dense(self.n_visible)

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = nn.relu(self.hidden_in(flat(x)))
        return self.mean(h), self.log_variance(h)

    def decode(self, z: jax.Array) -> jax.Array:
        """The pixels' logits (N, n_visible)."""
        return self.pixels(nn.relu(self.hidden_out(z)))

    def __call__(self, x: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        mean, log_variance = self.encode(x)
        z = mean + jnp.exp(0.5 * log_variance) * jax.random.normal(key, mean.shape, mean.dtype)
        return self.decode(z), mean, log_variance


def bernoulli_log_likelihood(logits: jax.Array, x: jax.Array) -> jax.Array:
    """log p(x) of pixels x under Bernoulli pixels of these logits, summed over the last
    axis (the pixels)."""
    return -jnp.sum(optax.sigmoid_binary_cross_entropy(logits, x), axis=-1)


def negative_elbo(
    logits: jax.Array, x: jax.Array, mean: jax.Array, log_variance: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(negative ELBO, its KL term), each in nats per example averaged over the batch: the
    Bernoulli reconstruction's cross-entropy plus KL(q(z|x) || N(0, I)) in closed form."""
    reconstruction = -bernoulli_log_likelihood(logits, flat(x))
    kl = 0.5 * jnp.sum(jnp.exp(log_variance) + mean**2 - 1.0 - log_variance, axis=1)
    return jnp.mean(reconstruction + kl), jnp.mean(kl)


def importance_log_weights(
    vae: VAE, params: dict, x: jax.Array, key: jax.Array, samples: int
) -> jax.Array:
    """log p(x, z_i) - log q(z_i | x) for `samples` draws z_i of the encoder's q(z | x)
    per example, (samples, N): each one's expectation is the ELBO."""
    x = flat(x)
    mean, log_variance = vae.apply({"params": params}, x, method=VAE.encode)
    noise = jax.random.normal(key, (samples, *mean.shape), mean.dtype)
    z = mean + jnp.exp(0.5 * log_variance) * noise  # (k, N, latent)
    logits = vae.apply({"params": params}, z, method=VAE.decode)  # (k, N, pixels)
    log_likelihood = bernoulli_log_likelihood(logits, x)
    log_prior = -0.5 * jnp.sum(z**2 + jnp.log(2 * jnp.pi), axis=-1)
    log_posterior = -0.5 * jnp.sum(noise**2 + log_variance + jnp.log(2 * jnp.pi), axis=-1)
    return log_likelihood + log_prior - log_posterior


def importance_weighted_bound(log_weights: jax.Array) -> jax.Array:
    """Burda, Grosse and Salakhutdinov's k-sample bound on log p(x), per example (N,), from
    k of `importance_log_weights` (k, N): log (1/k) sum_i p(x, z_i) / q(z_i | x). With one
    sample its mean is the ELBO; it rises toward log p(x) as k grows, so the ELBO is
    a lower bound of the likelihood that more samples tighten."""
    return jax.nn.logsumexp(log_weights, axis=0) - jnp.log(log_weights.shape[0])
