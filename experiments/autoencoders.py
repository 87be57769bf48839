"""Autoencoders and deep belief nets: codes learned without labels, on MNIST as the
papers do, or on another TFDS dataset of small images (`--dataset`).

Hinton and Salakhutdinov, "Reducing the dimensionality of data with neural networks"
(Science 2006): a 784-1000-500-250-30 autoencoder, pretrained greedily as a stack of
RBMs (CD-1) and unrolled, then fine-tuned by backpropagation, reconstructs MNIST's test
digits with an average squared error of 3.00 per image (logistic PCA 8.01, PCA 13.87);
the same pretraining makes a 784-500-500-2000-10 classifier reach 1.2% test error (the
best published for backpropagation from random weights, on other nets, was then 1.6%); a
784-1000-500-250-2 net's codes separate the digits better than
PCA's first two components. Beside them: Vincent et al.'s denoising autoencoder (2008)
and Kingma and Welling's variational autoencoder (2013; Flax's example reports a negative
ELBO of about 104 nats per binarised test digit after 10 epochs).

    python -m experiments.autoencoders --model=pca            # 30 components: 13.87
    python -m experiments.autoencoders --model=logistic_pca   # 30 components: 8.01
    python -m experiments.autoencoders --model=deep           # RBMs, then fine-tuning: 3.00
    python -m experiments.autoencoders --model=deep_random    # the same net from random weights
    python -m experiments.autoencoders --model=codes2d        # 2-D codes beside PCA's
    python -m experiments.autoencoders --model=denoising      # masking noise 25%
    python -m experiments.autoencoders --model=vae            # 20-d latent: about 104 nats
    python -m experiments.autoencoders --model=vae --layers=500,2 --workdir=runs/ae/vae2d
    python -m experiments.autoencoders --model=dbn_classifier  # 1.2%
    python -m experiments.autoencoders --model=random_classifier  # from random weights

`--model` presets the paper's net and training (any flag given overrides them, except
settings a model has no use for, which keep the preset's: PCA's training, the pretraining
of the denoising autoencoder and the VAE);
`--train_size` and `--test_size` make quick runs. Training uses all 60,000 training
images, as the papers do, and scores the test set after every epoch (`--validation`
holds the last 10,000 out and scores them too). The workdir (default
runs/autoencoders/<model>) gets config.json, metrics.jsonl, summary.json, checkpoints/,
the RBMs' own folders under pretrain/ and the pictures; the same command resumes a
stopped run, at the right RBM and step during pretraining. `launch/autoencoders.sh`
runs the whole study.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from itertools import pairwise
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from ml_collections import ConfigDict

from experiments import common
from lib.autoencoders import logistic_pca, nets, pca, pictures
from lib.autoencoders import train as train_lib
from lib.core import config as config_lib
from lib.core import data as data_lib
from lib.core import loop, metrics, steps
from lib.core.config import AT_LEAST_1, FRACTION, NON_NEGATIVE, POSITIVE, OneOf, Range, Setting
from lib.core.errors import ConfigError
from lib.core.stop import GracefulStop

FLAGS = flags.FLAGS

AUTOENCODERS = ("deep", "deep_random", "codes2d")
CLASSIFIERS = ("dbn_classifier", "random_classifier")

# Each model's preset: the papers' nets; training as the paper's where it says (the RBMs),
# Adam elsewhere (Hinton and Salakhutdinov fine-tuned by conjugate gradients).
_AE = {"epochs": 200, "batch_size": 100, "optimizer": "adam", "pretrain_epochs": 50}
MODELS: dict[str, dict[str, Any]] = {
    "pca": {"layers": (30,)},
    # Full-batch Adam: each step ("epoch") sees every image; the test codes get as many.
    "logistic_pca": {"layers": (30,), "epochs": 500, "optimizer": "adam", "learning_rate": 0.02},
    "deep": {**_AE, "layers": nets.PAPER_AUTOENCODER, "learning_rate": 3e-4},
    "deep_random": {**_AE, "layers": nets.PAPER_AUTOENCODER, "learning_rate": 1e-3,
                    "pretrain_epochs": 0},
    "codes2d": {**_AE, "layers": (1000, 500, 250, 2), "learning_rate": 3e-4},
    "denoising": {"layers": (500,), "epochs": 50, "batch_size": 100, "optimizer": "adam",
                  "learning_rate": 1e-3, "pretrain_epochs": 0},
    "vae": {"layers": (500, 20), "epochs": 30, "batch_size": 128, "optimizer": "adam",
            "learning_rate": 1e-3, "pretrain_epochs": 0},
    "dbn_classifier": {"layers": nets.PAPER_CLASSIFIER, "epochs": 50, "batch_size": 100,
                       "optimizer": "adam", "learning_rate": 1e-4, "pretrain_epochs": 50},
    "random_classifier": {"layers": nets.PAPER_CLASSIFIER, "epochs": 50, "batch_size": 100,
                          "optimizer": "adam", "learning_rate": 1e-4, "pretrain_epochs": 0},
}  # fmt: skip

# The number each model is compared with, and where it comes from.
REFERENCE = {
    "pca": (13.87, "Hinton & Salakhutdinov 2006, PCA"),
    "logistic_pca": (8.01, "Hinton & Salakhutdinov 2006, logistic PCA"),
    "deep": (3.00, "Hinton & Salakhutdinov 2006"),
    "vae": (104.0, "Flax's VAE example, 10 epochs"),
    "dbn_classifier": (0.012, "Hinton & Salakhutdinov 2006"),
    # Not this net from random weights: the paper quotes it as the best published error of
    # backpropagation from random weights at the time, by other nets.
    "random_classifier": (
        0.016,
        "best published randomly initialised backpropagation (other nets), quoted by "
        "Hinton & Salakhutdinov 2006",
    ),
}
MAX_WIDTH = 100_000

SETTINGS = (
    common.DATASET,
    Setting(
        "model", "deep", "The experiment: its net and training (a preset).", OneOf(tuple(MODELS))
    ),
    Setting(
        "workdir",
        None,
        "Where the run writes; default runs/autoencoders/<model>, under "
        "runs/<dataset>/autoencoders/ for another dataset.",
        kind=str,
    ),
    Setting("seed", 0, "Random seed (initialisation, order of batches, noise).", NON_NEGATIVE),
    Setting(
        "layers",
        (),
        "Widths after the pixels (784 for MNIST), the last the code: the components (pca, "
        "logistic_pca); "
        "the hidden units (denoising); hidden, latent (vae); the hidden layers "
        "(classifiers). Default: the model's.",
        kind=int,
    ),
    Setting(
        "epochs", None, "Epochs of training (fine-tuning); default: the model's.", AT_LEAST_1, int
    ),
    Setting("batch_size", None, "Mini-batch size; default: the model's.", AT_LEAST_1, int),
    Setting(
        "optimizer",
        None,
        "Optimizer of (fine-)training; default: the model's.",
        OneOf(train_lib.OPTIMIZERS),
        str,
    ),
    Setting("learning_rate", None, "Its learning rate; default: the model's.", POSITIVE, float),
    Setting(
        "pretrain_epochs",
        None,
        "CD-1 epochs per RBM of the pretraining (0: none) of the deep autoencoders and "
        "classifiers (the other models are not pretrained); default: the model's.",
        NON_NEGATIVE,
        int,
    ),
    Setting("pretrain_batch_size", 100, "Mini-batch size of the RBMs.", AT_LEAST_1),
    Setting(
        "rbm_learning_rate", 0.1, "CD-1 learning rate of RBMs with binary hidden units.", POSITIVE
    ),
    Setting(
        "linear_rbm_learning_rate",
        0.001,
        "CD-1 learning rate of the RBM with linear (Gaussian) hidden units, the code layer.",
        POSITIVE,
    ),
    Setting("weight_cost", 0.0002, "Weight decay of the RBMs.", NON_NEGATIVE),
    Setting("noise", 0.25, "Fraction of pixels masked to 0 (denoising).", FRACTION),
    Setting(
        "binarize",
        "sample",
        "Binary pixels for the VAE: sample, each pixel 1 with its intensity as probability, "
        "drawn once (as the static binarised MNIST); threshold, 1 above 0.5.",
        OneOf(("sample", "threshold")),
    ),
    Setting(
        "train_size", None, "Train on the first N training images (quick runs).", AT_LEAST_1, int
    ),
    Setting(
        "test_size", None, "Score the first N test images (quick runs).", Range(1, 10_000), int
    ),
    Setting(
        "validation",
        False,
        "Hold the last 10,000 training images out and score them every epoch (the papers "
        "train on all 60,000).",
    ),
)
common.define_setting_flags(SETTINGS)


def get_config(model: str = "deep") -> ConfigDict:
    """The preset of `model` as a config, every other setting at its default."""
    if model not in MODELS:
        raise ConfigError(f"unknown model '{model}'; choose from {', '.join(MODELS)}")
    return config_lib.preset(SETTINGS, {"model": model, **MODELS[model]})


def resolve(overrides: Mapping[str, Any]) -> ConfigDict:
    """The model's preset with every given setting over it, checked; a ConfigError names
    each bad value."""
    model = config_lib.given(overrides).get("model", "deep")
    config = config_lib.resolve(get_config(model), overrides, SETTINGS, empty_lists_unset=True)
    where = (
        "runs/autoencoders" if config.dataset == "mnist" else f"runs/{config.dataset}/autoencoders"
    )
    config.workdir = config.workdir or f"{where}/{config.model}"
    layers = tuple(config.layers)
    want = {"pca": 1, "logistic_pca": 1, "denoising": 1, "vae": 2}.get(config.model)
    if not layers or any(not 1 <= n <= MAX_WIDTH for n in layers):
        raise ConfigError(
            f"--layers={','.join(map(str, layers))} must be widths in [1, {MAX_WIDTH}]"
        )
    if want is not None and len(layers) != want:
        shape = {
            "pca": "the components",
            "logistic_pca": "the components",
            "denoising": "the hidden units",
            "vae": "hidden,latent",
        }
        raise ConfigError(
            f"--layers={','.join(map(str, layers))}: --model={config.model} takes "
            f"{want} width{'s' if want > 1 else ''} ({shape[config.model]})"
        )
    # PCA trains nothing; logistic PCA is full-batch Adam (its epochs are its steps); only
    # the nets of stacked RBMs (AUTOENCODERS, CLASSIFIERS) are pretrained.
    fixed = {
        "pca": ("epochs", "batch_size", "optimizer", "learning_rate", "pretrain_epochs"),
        "logistic_pca": ("batch_size", "optimizer", "pretrain_epochs"),
        "denoising": ("pretrain_epochs",),
        "vae": ("pretrain_epochs",),
    }.get(config.model, ())
    for name in fixed:
        config[name] = MODELS[config.model].get(name)
    return config


def reference(config: Mapping[str, Any]) -> tuple[float, str] | None:
    """The published number a run of `config` stands beside, and its source, or None: the
    numbers are for MNIST, the preset's net and the preset's start (pretrained or from
    random weights), so another dataset, other widths or the other start has none."""
    model = config["model"]
    if model not in REFERENCE or config["dataset"] != "mnist":
        return None
    preset = MODELS[model]
    if tuple(config["layers"]) != tuple(preset["layers"]):
        return None
    if bool(config["pretrain_epochs"]) != bool(preset.get("pretrain_epochs")):
        return None
    return REFERENCE[model]


def _data(config: dict) -> tuple[data_lib.Split, data_lib.Split, data_lib.Split | None]:
    """(train, test, validation or None) as the config asks."""
    splits = data_lib.load(config["dataset"], config["train_size"], order="book")
    train = splits.train
    if config["train_size"] is None and not config["validation"]:
        train = data_lib.Split(
            np.concatenate([train.images, splits.validation.images]),
            np.concatenate([train.labels, splits.validation.labels]),
        )
    test = splits.test.take(config["test_size"] or len(splits.test))
    return train, test, splits.validation if config["validation"] else None


def _widths(split: data_lib.Split, layers) -> str:
    """The net's widths, its pixels first: 784-1000-500-250-30."""
    return "-".join(map(str, [int(np.prod(split.images.shape[1:])), *layers]))


def _flat(split: data_lib.Split) -> np.ndarray:
    return split.images.reshape(len(split), -1)


def _binary(x: np.ndarray, how: str, salt: int) -> np.ndarray:
    """Binary pixels: drawn once with a fixed key (the same for every run and seed)."""
    if how == "threshold":
        return (x > 0.5).astype(np.float32)
    return (np.random.default_rng([2013, salt]).random(x.shape) < x).astype(np.float32)


def run(overrides: Mapping[str, Any], workdir: str | None = None, verbose: bool = True) -> dict:
    """Run one model (the given settings over its preset, `resolve`) and return its summary;
    `workdir` wins over overrides["workdir"]."""
    config = config_lib.as_dict(
        resolve({**overrides, "workdir": workdir or overrides.get("workdir")})
    )
    common.training_images(config)  # refuses a --train_size beyond them
    data = _data(config)
    train = data[0]
    for name in ("batch_size", "pretrain_batch_size"):
        if config[name] is not None and config[name] > len(train):
            raise ConfigError(f"--{name}={config[name]} exceeds the {len(train):,} training images")
    pixels = int(np.prod(train.images.shape[1:]))
    if config["model"] in ("pca", "logistic_pca") and config["layers"][0] > pixels:
        raise ConfigError(
            f"--layers={config['layers'][0]} must be at most {pixels} components, the pixels "
            f"of {config['dataset']}"
        )
    with common.own_workdir(config, may_grow=("epochs",)) as root:
        return _run(config, root, data, verbose)


def _run(config: dict, root: Path, data, verbose: bool) -> dict:
    say = print if verbose else (lambda *a, **k: None)
    started = time.perf_counter()
    train, test, validation = data
    writer = metrics.MetricsWriter(root)
    writer.write_json("config.json", config)
    model = config["model"]
    say(
        f"{model}: {_widths(train, config['layers'])}, {len(train):,} training and "
        f"{len(test):,} test images of {config['dataset']}",
        flush=True,
    )
    if model == "pca":
        summary = _pca(config, root, train, test)
    elif model == "logistic_pca":
        summary = _logistic_pca(config, root, train, test, say)
    else:
        with GracefulStop() as stop:
            summary = _trained(config, root, train, test, validation, verbose, stop)
    if not summary["finished"]:
        common.say_stopped(say, config, stop)
        return summary
    published = reference(config)
    if published is not None:
        summary["reference"], summary["reference_source"] = published
    # The loops' time over every session of the run, and this session's time outside them.
    session = time.perf_counter() - started - summary.pop("session_loop_time_s", 0.0)
    summary["wall_time_s"] = summary.get("train_time_s", 0.0) + session
    summary["device"] = f"{jax.devices()[0].device_kind} x1"
    writer.write_json("summary.json", summary)
    shown = {
        k: v
        for k, v in summary.items()
        if isinstance(v, float) and k not in ("train_time_s", "pretrain_time_s", "reference")
    }
    say("  ".join(f"{k} {v:.4g}" for k, v in shown.items()), flush=True)
    if published is not None:
        say(f"  published: {published[0]:.4g} ({published[1]})", flush=True)
    return summary


def _pca(config: dict, root: Path, train: data_lib.Split, test: data_lib.Split) -> dict:
    k, x_train, x = config["layers"][0], _flat(train), _flat(test)
    fitted = pca.fit(x_train, k)
    _draw_beside_pca(root, f"PCA, {k} components", test, fitted, [])
    return {
        "finished": True,
        "model": "pca",
        "components": k,
        "test_squared_error": pca.squared_error(fitted, x),
        "train_squared_error": pca.squared_error(fitted, x_train),
    }


def _draw_beside_pca(root: Path, title: str, test: data_lib.Split, fitted: pca.PCA, rows):
    """reconstructions.png: ten test images, the given (name, reconstructions) rows of
    them, and PCA's."""
    shown = _flat(test)[:10]
    k = len(fitted.components)
    pictures.digit_rows(
        [("test", shown), *rows, (f"PCA {k}", _pca_reconstruction(fitted, shown))],
        root / "reconstructions.png",
        title=title,
        image_shape=test.images.shape[1:],
    )


def _pca_reconstruction(fitted: pca.PCA, x: np.ndarray) -> np.ndarray:
    return np.clip(pca.decode(fitted, pca.encode(fitted, x)), 0, 1)


def _logistic_pca(config: dict, root: Path, train: data_lib.Split, test: data_lib.Split, say):
    """Minutes of full-batch Adam, so a stopped fit starts again rather than resumes."""
    k, steps, rate = config["layers"][0], config["epochs"], config["learning_rate"]
    say(f"  fitting {k} components and the training images' codes: {steps} steps", flush=True)
    started = time.perf_counter()
    x_train = _flat(train)
    model, codes, losses = logistic_pca.fit(x_train, k, steps, rate)
    losses = np.asarray(losses)  # waits for the fit
    fitted_s = time.perf_counter() - started
    say(
        f"  cross-entropy {losses[0]:.2f} -> {losses[-1]:.2f} per image, {fitted_s:.0f} s",
        flush=True,
    )
    x = _flat(test)
    test_codes = logistic_pca.encode(model, x, steps, rate)
    writer = metrics.MetricsWriter(root)
    writer.reset(
        {"epoch": step + 1, "train_cross_entropy": float(losses[step])}
        for step in range(0, steps, max(1, steps // 100))
    )
    writer.close()
    fitted = pca.fit(x_train, k)
    ours = np.asarray(logistic_pca.decode(model, test_codes[:10]))
    _draw_beside_pca(
        root, f"Logistic PCA, {k} components", test, fitted, [(f"logistic PCA {k}", ours)]
    )
    return {
        "finished": True,
        "model": "logistic_pca",
        "components": k,
        "test_squared_error": logistic_pca.squared_error(model, test_codes, x),
        "train_squared_error": logistic_pca.squared_error(model, codes, x_train),
        "test_cross_entropy": float(logistic_pca.cross_entropy(model, test_codes, x)),
        "pca_test_squared_error": pca.squared_error(fitted, x),
        "fit_time_s": time.perf_counter() - started,
    }


def _pretrain(config, root, x, hiddens, verbose, stop):
    sizes = [x.shape[1], *config["layers"]]
    rates = [
        config["rbm_learning_rate"] if h == "binary" else config["linear_rbm_learning_rate"]
        for h in hiddens
    ]
    names = [f"RBM {i + 1}/{len(hiddens)} ({a}-{b})" for i, (a, b) in enumerate(pairwise(sizes))]
    return train_lib.pretrain(
        jnp.asarray(x),
        sizes,
        hiddens,
        rates,
        config["pretrain_epochs"],
        config["pretrain_batch_size"],
        config["weight_cost"],
        config["seed"],
        root / "pretrain",
        hooks=lambda i: common.loop_hooks(names[i], verbose, config["pretrain_epochs"]),
        should_stop=stop,
    )


def _trained(config, root, train, test, validation, verbose, stop) -> dict:
    """Pretraining (where asked), then training through `loop.train`, then the pictures."""
    model, layers, seed = config["model"], tuple(config["layers"]), config["seed"]
    x, y = _flat(train), train.labels
    shape, classes = train.images.shape[1:], data_lib.num_classes((train, test))
    scored = {"test": (_flat(test), test.labels)}
    if validation is not None:
        scored["val"] = (_flat(validation), validation.labels)
    if model == "vae":
        x = _binary(x, config["binarize"], 0)
        scored = {k: (_binary(v, config["binarize"], i + 1), t)
                  for i, (k, (v, t)) in enumerate(scored.items())}  # fmt: skip
    key = jax.random.key(seed)
    stack, pretrain_time, loop_time = None, 0.0, 0.0
    if config["pretrain_epochs"] and model in (*AUTOENCODERS, *CLASSIFIERS):
        hiddens = ["binary"] * len(layers)
        if model in AUTOENCODERS:
            hiddens[-1] = "linear"  # the code layer: linear units with Gaussian noise
        began = time.perf_counter()
        pretrained = _pretrain(config, root, x, hiddens, verbose, stop)
        loop_time = time.perf_counter() - began
        if pretrained is None:
            return {"finished": False}
        stack = [r.state.params for r in pretrained]
        pretrain_time = sum(r.wall_time_s for r in pretrained)

    if model in CLASSIFIERS:
        net = nets.Classifier(layers, n_classes=classes)
        params = jax.jit(net.init)(key, jnp.zeros((1, x.shape[1])))["params"]
        if stack is not None:
            params = nets.from_rbms(params, stack)

        def loss(params, batch, key):
            logits = net.apply({"params": params}, batch[0])
            value = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]))
            return value, {"error": jnp.mean(jnp.argmax(logits, -1) != batch[1])}

        def score(params, xs, ys, rows):
            logits = net.apply({"params": params}, xs)
            return {"error": (jnp.argmax(logits, -1) != ys).astype(jnp.float32)}

    elif model == "vae":
        net = nets.VAE(latent=layers[1], n_hidden=layers[0], n_visible=x.shape[1])
        params = jax.jit(net.init)(key, jnp.zeros((1, x.shape[1])), key)["params"]

        def loss(params, batch, key):
            logits, mean, log_variance = net.apply({"params": params}, batch[0], key)
            value, kl = nets.negative_elbo(logits, batch[0], mean, log_variance)
            return value, {"kl": kl}

        def score(params, xs, ys, rows):
            return {"negative_elbo": vae_scores(net, params, xs, rows, seed)}

    else:
        if model == "denoising":
            net = nets.DenoisingAutoencoder(layers[0], n_visible=x.shape[1])
        else:
            net = nets.Autoencoder(layers, n_visible=x.shape[1])
        params = jax.jit(net.init)(key, jnp.zeros((1, x.shape[1])))["params"]
        if stack is not None:
            params = nets.unroll(stack)
        noise = config["noise"] if model == "denoising" else 0.0

        def loss(params, batch, key):
            inputs = nets.mask(key, batch[0], noise) if noise else batch[0]
            logits = net.apply({"params": params}, inputs)
            value = nets.cross_entropy(logits, batch[0])
            return value, {"squared_error": nets.squared_error(logits, batch[0])}

        def score(params, xs, ys, rows):
            logits = net.apply({"params": params}, xs)
            return {
                "squared_error": _per_example(nets.squared_error, logits, xs),
                "cross_entropy": _per_example(nets.cross_entropy, logits, xs),
            }

    tx = train_lib.optimizer(config["optimizer"], config["learning_rate"])
    state = steps.TrainState(params, jax.jit(tx.init)(params))
    batches = steps.Batches(len(x), config["batch_size"], seed)
    step = steps.make_step(loss, tx, (jnp.asarray(x), jnp.asarray(y)), batches, seed)
    score_jit = jax.jit(score)

    def evaluate(state) -> dict[str, float]:
        out = {}
        for split, (xs, ys) in scored.items():
            rows = jnp.arange(len(xs))
            values = steps.batched(
                lambda a, b, r: score_jit(state.params, a, b, r),
                jnp.asarray(xs),
                jnp.asarray(ys),
                rows,
            )
            out.update({f"{split}_{k}": float(jnp.mean(v)) for k, v in values.items()})
        return out

    began = time.perf_counter()
    result = loop.train(
        state,
        step,
        batches.schedule(config["epochs"]),
        root,
        evaluate=evaluate,
        hooks=common.loop_hooks(model, verbose, config["epochs"]),
        should_stop=stop,
    )
    loop_time += time.perf_counter() - began
    if not result.finished:
        return {"finished": False}
    final = result.history[-1]
    summary = {
        "finished": True,
        "model": model,
        "layers": list(layers),
        "params": metrics.count_params(result.state.params),
        **{k: v for k, v in final.items() if k.startswith(("test_", "val_"))},
        "final_train_loss": final["train_loss"],
        "pretrain_time_s": pretrain_time,
        "train_time_s": pretrain_time + result.wall_time_s,
        "session_loop_time_s": loop_time,
    }
    if model in AUTOENCODERS:
        fitted = pca.fit(x, layers[-1])
        summary["pca_test_squared_error"] = pca.squared_error(fitted, scored["test"][0])
    _pictures(config, root, net, result.state.params, stack, scored["test"], x, shape)
    return summary


def _per_example(loss, *arrays: jax.Array) -> jax.Array:
    """`loss` (a mean over the examples) of each example alone, (N,)."""
    return jax.vmap(lambda *a: loss(*(b[None] for b in a)))(*arrays)


def vae_scores(net: nets.VAE, params, xs: jax.Array, rows: jax.Array, seed: int) -> jax.Array:
    """Each image's negative ELBO (N,) with one sample of z, keyed on the image's row
    `rows` in the scored set: the same every epoch, whatever chunk the image is scored in,
    and different from row to row."""
    base = jax.random.key(seed + 1)

    def one(x, row):
        logits, mean, log_variance = net.apply(
            {"params": params}, x[None], jax.random.fold_in(base, row)
        )
        return nets.negative_elbo(logits, x[None], mean, log_variance)[0]

    return jax.vmap(one)(xs, rows)


def _pictures(config, root, net, params, stack, test, train_x, shape) -> None:
    """The run's figures: reconstructions, filters, codes or samples, of images of `shape`."""
    model, layers = config["model"], config["layers"]
    xs, ys = test
    shown = jnp.asarray(xs[:10])

    def compiled(method: str, sigmoid: bool = False):
        """The net's `method` on the trained parameters as one compiled program (rather
        than op by op), its logits through the sigmoid when asked."""

        def apply(x):
            out = net.apply({"params": params}, x, method=method)
            return jax.nn.sigmoid(out) if sigmoid else out

        return jax.jit(apply)

    if stack is not None:
        filters = np.asarray(stack[0].w).T[:100]
        pictures.image_grid(
            filters, root / "rbm_filters.png", "first RBM's filters", signed=True, image_shape=shape
        )
    if model in AUTOENCODERS or model == "denoising":
        rows = [("test", np.asarray(shown))]
        if model == "denoising":
            masked = nets.mask(jax.random.key(config["seed"] + 2), shown, config["noise"])
            rows.append((f"masked {config['noise']:.0%}", np.asarray(masked)))
            rows.append(("denoised", np.asarray(compiled("__call__", True)(masked))))
            pictures.image_grid(np.asarray(params["w"]).T[:100], root / "filters.png",
                                "first-layer filters", signed=True, image_shape=shape)  # fmt: skip
        rows.append(("autoencoder", np.asarray(compiled("__call__", True)(shown))))
        fitted = pca.fit(train_x, layers[-1])
        rows.append((f"PCA {layers[-1]}", _pca_reconstruction(fitted, xs[:10])))
        widths = "-".join(map(str, [train_x.shape[1], *layers]))
        pictures.digit_rows(rows, root / "reconstructions.png", f"{model}: {widths}", shape)
    if model in AUTOENCODERS and layers[-1] == 2:
        codes = steps.batched(compiled("encode"), jnp.asarray(xs))
        fitted = pca.fit(train_x, 2)
        pictures.codes_scatter(
            [("autoencoder " + "-".join(map(str, [train_x.shape[1], *layers])), np.asarray(codes)),
             ("PCA, first two components", pca.encode(fitted, xs))],
            ys, root / "codes2d.png",
        )  # fmt: skip
    if model == "vae":
        latent = layers[1]
        decode = compiled("decode", sigmoid=True)
        z = jax.random.normal(jax.random.key(config["seed"] + 3), (64, latent))
        samples = np.asarray(decode(z))
        pictures.image_grid(
            samples, root / "samples.png", "VAE: samples from the prior", image_shape=shape
        )
        rows = [("test", np.asarray(shown))]
        mean, _ = compiled("encode")(shown)
        rows.append(("VAE (mean z)", np.asarray(decode(mean))))
        pictures.digit_rows(rows, root / "reconstructions.png", "VAE reconstructions", shape)
        if latent == 2:
            side = 15
            grid = jax.scipy.stats.norm.ppf(jnp.linspace(0.05, 0.95, side))
            z = jnp.stack(jnp.meshgrid(grid, -grid), -1).reshape(-1, 2)[:, ::-1]
            manifold = np.asarray(decode(z))
            pictures.image_grid(
                manifold, root / "manifold.png", "VAE: the 2-d latent manifold", image_shape=shape
            )


def main(argv):
    summary = common.run_from_flags(argv, run, SETTINGS)
    print(json.dumps({k: v for k, v in summary.items() if k.startswith("test_")}))


if __name__ == "__main__":
    app.run(main, flags_parser=common.parse_flags)
