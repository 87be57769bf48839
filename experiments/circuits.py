"""Real-valued circuits: Karpathy's "Hacker's guide to Neural Networks", chapter 1.

From one multiply gate to a neuron: improving a gate's output by random search, by the
numerical gradient and by the analytic gradient; backpropagation through a two-gate
circuit; the single neuron's gradient computed three ways. Runs in seconds:

    python -m experiments.circuits --workdir=runs/circuits

and prints (seed 0)

    f(x, y) = x * y at (-2, 3) = -6, made larger:
      random local search (100 tries)          -> f = -5.9520
      numerical gradient (3, -2), one step     -> f = -5.8706
      analytic gradient (3, -2), one step      -> f = -5.8706
    (x + y) * z at (-2, 5, -4) = -12; gradients on x, y, z: -4, -4, 3
    sigmoid(a*x + b*y + c) = 0.880797; gradients on a, b, c, x, y:
      -0.105, 0.315, 0.105, 0.105, 0.210 (backprop, numerical and jax.grad agree to 2e-9)

The gradient check compares `jax.grad` of any of the lib's models with central
differences, in float64 on a tiny batch, and prints the relative error (floored where
the differences' roundoff hides the gradient, see `lib.karpathy.gates.gradient_check`);
a sound gradient gives 2e-8 or less (3e-9 for the shallow net, 5e-9 for conv2, 7e-9 for
relu), a wrong one 1e-2 or more. The command exits with status 1 when a check fails:

    python -m experiments.circuits --check=conv2,relu,svm
    python -m experiments.circuits --check=all      # 13 models, under two minutes
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import ConfigDict

from experiments import common
from lib.core import config as config_lib
from lib.core.config import AT_LEAST_1, NON_NEGATIVE, POSITIVE, Setting
from lib.core.errors import UserError
from lib.core.metrics import prepare_workdir, refuse_other_command, write_json
from lib.karpathy import gates
from lib.karpathy import svm as svm_lib

FLAGS = flags.FLAGS

# Every setting of a run, declared once: the flags, the defaults (`get_config`), the range
# checks and the saved config.json all derive from this list.
SETTINGS = (
    Setting(
        "workdir",
        None,
        "Where config.json and summary.json go; default runs/circuits, or "
        "runs/circuits_check with --check.",
        kind=str,
    ),
    Setting("seed", 0, "Seed of the random search and of the gradient check."),
    Setting("tweak", 0.01, "Random local search: the largest change of an input.", POSITIVE),
    Setting("tries", 100, "Random local search: how many tweaks to try.", AT_LEAST_1),
    Setting("h", 1e-4, "Numerical gradient: the nudge of each input.", POSITIVE),
    Setting("step_size", 0.01, "The step taken along a gradient.", POSITIVE),
    Setting(
        "check",
        (),
        "Instead of the chapter, gradient-check these models (comma-separated names, or "
        "'all'): the toy models neuron, svm, two_layer, linear_svm, rff_svm, and the MNIST "
        "nets of lib.nielsen.nets (shallow, conv1, conv2, relu, ...).",
        kind=str,
    ),
    Setting("check_batch", 2, "Gradient check: MNIST images in the batch.", AT_LEAST_1),
    Setting(
        "check_coords",
        10,
        "Gradient check: coordinates nudged per parameter array (0: all).",
        NON_NEGATIVE,
    ),
    Setting("check_h", 1e-6, "Gradient check: the nudge, in float64.", POSITIVE),
    Setting(
        "check_tolerance", 1e-6, "Gradient check: the largest relative error passed.", POSITIVE
    ),
)
common.define_setting_flags(SETTINGS)

TOY_CHECKS = ("neuron", "svm", "two_layer", "linear_svm", "rff_svm")


# Chapter 1 ---------------------------------------------------------------------------


def multiply_gate(seed: int, tweak: float, tries: int, h: float, step_size: float) -> dict:
    """f(x, y) = x * y at (-2, 3), made larger three ways."""
    f = gates.multiply_forward
    x, y = -2.0, 3.0
    search_args, search_out = gates.random_local_search(
        f, (x, y), jax.random.PRNGKey(seed), tweak=tweak, tries=tries
    )
    # The text's forward difference; for x * y it is exact up to rounding.
    num_dx, num_dy = gates.numerical_gradient(f, (x, y), h=h, central=False)
    ana_dx, ana_dy = (float(g) for g in gates.multiply_backward((x, y), 1.0))

    def stepped(dx: float, dy: float) -> dict:
        nx, ny = x + step_size * dx, y + step_size * dy
        return {"grad": [dx, dy], "x": nx, "y": ny, "f": float(f(nx, ny))}

    return {
        "x": x,
        "y": y,
        "f": float(f(x, y)),
        "random_search": {"x": search_args[0], "y": search_args[1], "f": search_out},
        "numerical_gradient": stepped(num_dx, num_dy),
        "analytic_gradient": stepped(ana_dx, ana_dy),
    }


def add_multiply() -> dict:
    """(x + y) * z at (-2, 5, -4): the wires and the gradient on each input."""
    wires = gates.forward(gates.ADD_MULTIPLY, {"x": -2.0, "y": 5.0, "z": -4.0})
    grads = gates.backward(gates.ADD_MULTIPLY, wires)
    return {
        "inputs": {k: wires[k] for k in ("x", "y", "z")},
        "q": float(wires["q"]),
        "f": float(wires["f"]),
        "grad": {k: float(grads[k]) for k in ("x", "y", "z")},
    }


NEURON_INPUTS = {"a": 1.0, "b": 2.0, "c": -3.0, "x": -1.0, "y": 3.0}


def neuron(h: float) -> dict:
    """The neuron's output and its gradient on all five inputs, three ways."""
    with jax.enable_x64(True):
        values = {k: jnp.float64(v) for k, v in NEURON_INPUTS.items()}
        wires = gates.forward(gates.NEURON, values)
        grads = gates.backward(gates.NEURON, wires)
        order = gates.circuit_inputs(gates.NEURON)
        f = gates.as_function(gates.NEURON)
        args = tuple(values[k] for k in order)
        numeric = dict(zip(order, gates.numerical_gradient(f, args, h=h), strict=True))
        autodiff = jax.grad(f, argnums=tuple(range(len(order))))(*args)
        autodiff = {k: float(g) for k, g in zip(order, autodiff, strict=True)}
    names = list(NEURON_INPUTS)
    methods = {
        "backprop": {k: float(grads[k]) for k in names},
        "numerical": {k: numeric[k] for k in names},
        "jax_grad": {k: autodiff[k] for k in names},
    }
    disagreement = max(
        abs(methods[m1][k] - methods[m2][k]) for k in names for m1 in methods for m2 in methods
    )
    return {
        "inputs": NEURON_INPUTS,
        "s": float(wires["s"]),
        "f": float(wires["f"]),
        "grad": methods,
        "largest_disagreement": disagreement,
    }


GATE_TEST_POINTS = {
    "multiply": (-2.0, 3.0),
    "add": (-2.0, 3.0),
    "max": (-2.0, 3.0),
    "sigmoid": (0.5,),
}


def gate_checks(h: float) -> dict:
    """Every gate's backward pass against the numerical gradient of its forward pass."""
    out = {}
    with jax.enable_x64(True):
        for name, gate in gates.GATES.items():
            args = tuple(jnp.float64(a) for a in GATE_TEST_POINTS[name])
            backward = [float(g) for g in gate.backward(args, 1.0)]
            numeric = list(gates.numerical_gradient(gate.forward, args, h=h))
            out[name] = {
                "at": [float(a) for a in args],
                "backward": backward,
                "numerical": numeric,
                "largest_difference": max(
                    abs(b - n) for b, n in zip(backward, numeric, strict=True)
                ),
            }
    return out


# Gradient checks on the lib's models ---------------------------------------------------


def _mnist_batch(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first n MNIST test images, in [0, 1]."""
    from lib.core import data

    images, labels = data.load_tfds_arrays("mnist", "test")
    return images[:n].astype(np.float64) / 255.0, labels[:n]


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))


def mnist_net_names() -> tuple[str, ...]:
    """The MNIST nets of lib.nielsen.nets, or none when that module cannot be imported."""
    try:
        from lib.nielsen import nets as mnist
    except ImportError:
        return ()
    return tuple(mnist.NETS)


def check_target(name: str, key: jax.Array, batch: int) -> tuple[Callable[[Any], jax.Array], Any]:
    """The loss of model `name` as a function of its parameters, and the parameters."""
    if name == "neuron":
        f = gates.as_function(gates.NEURON)
        order = gates.circuit_inputs(gates.NEURON)
        return (lambda p: f(*(p[k] for k in order))), dict(NEURON_INPUTS)
    if name == "svm":
        points, labels = svm_lib.toy_data(jnp.float64)
        # Away from the init the hinge has no kinks nearby at the toy points.
        params = {"a": 0.7, "b": -0.3, "c": 0.1}
        return functools.partial(svm_lib.svm_loss, points=points, labels=labels, reg=0.1), params
    if name == "two_layer":
        points, labels = svm_lib.toy_data(jnp.float64)
        params = svm_lib.init_two_layer(key, dtype=jnp.float64)
        return functools.partial(svm_lib.two_layer_loss, points=points, labels=labels), params
    images, labels = _mnist_batch(batch)
    if name in ("linear_svm", "rff_svm"):
        x = svm_lib.flatten_images(jnp.asarray(images, jnp.float64))
        if name == "rff_svm":
            rff = svm_lib.init_random_fourier_features(key, x.shape[1], 64, 0.02, jnp.float64)
            x = svm_lib.random_fourier_features(rff, x)
        w_key, b_key = jax.random.split(jax.random.fold_in(key, 1))
        params = {
            "w": 0.01 * jax.random.normal(w_key, (x.shape[1], 10), jnp.float64),
            "b": 0.01 * jax.random.normal(b_key, (10,), jnp.float64),
        }

        def hinge(p):
            return svm_lib.multiclass_hinge_loss(svm_lib.linear_scores(p, x), jnp.asarray(labels))

        return hinge, params
    from lib.nielsen import nets as mnist

    model = mnist.create(name)
    x = jnp.asarray(images, jnp.float64)
    variables = jax.jit(functools.partial(model.init, train=False))(key, x)
    params = variables["params"]
    others = {k: v for k, v in variables.items() if k != "params"}
    # The book's Softmax layer starts at zero weights, where every image gets the same
    # logits and many gradients vanish; a random point tests the chain rule everywhere.
    params = _moved(jax.random.fold_in(key, 2), params)

    def loss(p):
        return _cross_entropy(model.apply({"params": p, **others}, x, train=False), labels)

    return loss, params


@jax.jit
def _moved(key: jax.Array, params: Any) -> Any:
    """Each parameter moved by Gaussian noise of scale 0.1 (one program for the tree)."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        treedef,
        [
            p + 0.1 * jax.random.normal(k, p.shape, p.dtype)
            for p, k in zip(leaves, keys, strict=True)
        ],
    )


def check_model(name: str, seed: int, batch: int, coords: int, h: float) -> dict:
    """Relative error of `jax.grad` against central differences for model `name`.

    `relative_error` is None, and `problem` says why, when the model cannot be checked
    in float64.
    """
    key = jax.random.PRNGKey(seed)
    with jax.enable_x64(True):
        fn, params = check_target(name, key, batch)
        sizes = [int(np.prod(np.shape(p))) for p in jax.tree.leaves(params)]
        result = {
            "parameters": sum(sizes),
            "arrays": len(sizes),
            "coordinates_checked": sum(min(s, coords) if coords else s for s in sizes),
            "relative_error": None,
        }
        try:
            result["relative_error"] = gates.gradient_check(
                fn, params, h=h, num_checks=coords or None, key=jax.random.fold_in(key, 3)
            )
        except gates.PrecisionError as e:
            result["problem"] = str(e)
    return result


def resolve_check_names(requested: list[str]) -> list[str]:
    known = (*TOY_CHECKS, *mnist_net_names())
    if requested == ["all"]:
        return list(known)
    unknown = [n for n in requested if n not in known]
    if unknown:
        raise UserError(
            f"unknown model '{unknown[0]}' for --check; choose from {', '.join(known)} or all"
        )
    return requested


# The run -----------------------------------------------------------------------------


def get_config() -> ConfigDict:
    """Every setting at its default."""
    return config_lib.defaults(SETTINGS)


def resolve(overrides: Mapping[str, Any]) -> ConfigDict:
    """The defaults with every non-None override over them, checked; a ConfigError (a
    UserError) names each bad value. The workdir is left None when not given."""
    config = config_lib.resolve(get_config(), overrides, SETTINGS)
    return config


def _fmt(values: list[float]) -> str:
    return "(" + ", ".join(f"{v:.4f}" for v in values) + ")"


def chapter(config: dict, say: Callable[..., None]) -> dict:
    gate = multiply_gate(
        config["seed"], config["tweak"], config["tries"], config["h"], config["step_size"]
    )
    say("== The single gate: f(x, y) = x * y at x = -2, y = 3 ==")
    say(f"f(-2, 3) = {gate['f']:.4f}; each strategy tries to make it larger")
    rs = gate["random_search"]
    say(
        f"  random local search ({config['tries']} tweaks of up to {config['tweak']}, "
        f"seed {config['seed']}): x = {rs['x']:.4f}, y = {rs['y']:.4f} -> f = {rs['f']:.4f}"
    )
    ng, ag = gate["numerical_gradient"], gate["analytic_gradient"]
    say(
        f"  numerical gradient (h = {config['h']:g}): df/dx, df/dy = {_fmt(ng['grad'])}; "
        f"one step of {config['step_size']}: x = {ng['x']:.4f}, y = {ng['y']:.4f} "
        f"-> f = {ng['f']:.4f}"
    )
    say(
        f"  analytic gradient (df/dx = y, df/dy = x): {_fmt(ag['grad'])}; "
        f"one step of {config['step_size']}: x = {ag['x']:.4f}, y = {ag['y']:.4f} "
        f"-> f = {ag['f']:.4f}"
    )

    am = add_multiply()
    say("\n== Backpropagation: f(x, y, z) = (x + y) * z at x = -2, y = 5, z = -4 ==")
    say(f"q = x + y = {am['q']:.4f}; f = q * z = {am['f']:.4f}")
    say(
        "gradients (add gate passes df/dq = z on to x and y; multiply gate gives df/dz = q): "
        + ", ".join(f"df/d{k} = {v:.4f}" for k, v in am["grad"].items())
    )

    nr = neuron(config["h"])
    say("\n== A single neuron: f = sigmoid(a*x + b*y + c) at a=1, b=2, c=-3, x=-1, y=3 ==")
    say(f"s = a*x + b*y + c = {nr['s']:.4f}; f = sigmoid(s) = {nr['f']:.6f}")
    say(f"{'input':>7} {'value':>8} {'backprop':>14} {'numerical':>14} {'jax.grad':>14}")
    for k, v in nr["inputs"].items():
        row = " ".join(f"{nr['grad'][m][k]:14.10f}" for m in ("backprop", "numerical", "jax_grad"))
        say(f"{'df/d' + k:>7} {v:8.2f} {row}")
    say(
        f"largest disagreement between the three: {nr['largest_disagreement']:.1e} "
        f"(the numerical gradient uses central differences, h = {config['h']:g}, float64)"
    )

    gc = gate_checks(config["h"])
    say("\n== Every gate's backward pass against finite differences ==")
    for name, r in gc.items():
        say(
            f"  {name:>8} at {_fmt(r['at'])}: backward {_fmt(r['backward'])}, numerical "
            f"{_fmt(r['numerical'])}, largest difference {r['largest_difference']:.1e}"
        )
    return {"multiply_gate": gate, "add_multiply": am, "neuron": nr, "gates": gc}


def check_mode(config: dict, names: list[str], say: Callable[..., None]) -> dict:
    say(
        f"== Gradient check: jax.grad against central differences (float64, h = "
        f"{config['check_h']:g}, up to {config['check_coords'] or 'all'} coordinates per "
        f"array, MNIST batch of {config['check_batch']}) =="
    )
    say(f"{'model':>11} {'parameters':>11} {'checked':>8} {'relative error':>15}")
    results = {}
    for name in names:
        r = check_model(name, config["seed"], config["check_batch"], config["check_coords"],
                        config["check_h"])  # fmt: skip
        error = r["relative_error"]
        r["passed"] = error is not None and error <= config["check_tolerance"]
        results[name] = r
        shown = "-" if error is None else f"{error:.2e}"
        verdict = "ok" if r["passed"] else "FAILED"
        if "problem" in r:
            verdict += f" ({r['problem']})"
        say(
            f"{name:>11} {r['parameters']:>11,} {r['coordinates_checked']:>8} {shown:>15}  "
            f"{verdict}",
            flush=True,
        )
    failed = [n for n, r in results.items() if not r["passed"]]
    say(
        f"all {len(results)} passed (relative error <= {config['check_tolerance']:g})"
        if not failed
        else f"FAILED: {', '.join(failed)} (relative error > {config['check_tolerance']:g})"
    )
    return {"checks": results, "passed": not failed}


def run(overrides: Mapping[str, Any], workdir: str | None = None, verbose: bool = True) -> dict:
    """The chapter, or the gradient checks when the check setting names models, with the
    given settings (or a whole config) over the defaults (`resolve`);
    `workdir` wins over overrides["workdir"]."""
    config = config_lib.as_dict(
        resolve({**overrides, "workdir": workdir or overrides.get("workdir")})
    )
    names = resolve_check_names(config["check"]) if config["check"] else []
    default_workdir = "runs/circuits_check" if config["check"] else "runs/circuits"
    config = {**config, "workdir": config["workdir"] or default_workdir}
    root = prepare_workdir(config["workdir"])
    refuse_other_command(root, config)
    write_json(root / "config.json", config)
    say = print if verbose else (lambda *a, **k: None)
    if config["check"]:
        from lib.core.errors import DataError

        try:
            summary = check_mode(config, names, say)
        except DataError as e:
            raise UserError(str(e)) from None
    else:
        summary = chapter(config, say)
    write_json(root / "summary.json", summary)
    say(f"\nwrote {root / 'summary.json'}")
    return summary


def main(argv: list[str]) -> None:
    summary = common.run_from_flags(argv, run, SETTINGS)
    if not summary.get("passed", True):  # a failed gradient check
        sys.exit(1)


if __name__ == "__main__":
    app.run(main, flags_parser=common.parse_flags)
