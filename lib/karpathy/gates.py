"""Real-valued circuits: gates, backpropagation and gradient checks.

Karpathy, "Hacker's guide to Neural Networks", chapter 1 ("Real-valued Circuits"):
a gate computes its output from its inputs (forward) and turns the gradient arriving
on its output into gradients on its inputs (backward: the local gradient times the
gradient from above). A circuit wires gates together; backpropagation walks it in
reverse, each gate applying the chain rule, and adds up the gradients of a wire that
feeds several gates.

The gates are written with `jax.numpy`, so a circuit's forward pass can also be
differentiated by `jax.grad` and compared with the gates' own backward pass. Run the
comparisons in float64 (`with jax.enable_x64(True):`), where finite differences are
accurate to many digits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

Array = Any  # a jax or numpy array, or a Python float


class Gate(NamedTuple):
    """A gate: `forward(*inputs) -> output` and `backward(inputs, grad_output) -> grads`.

    `backward` gets the inputs the forward pass saw and the gradient on the output,
    and returns one gradient per input.
    """

    name: str
    forward: Callable[..., Array]
    backward: Callable[[tuple[Array, ...], Array], tuple[Array, ...]]


def multiply_forward(x: Array, y: Array) -> Array:
    return x * y


def multiply_backward(inputs: tuple[Array, Array], grad_output: Array) -> tuple[Array, Array]:
    """d(xy)/dx = y and d(xy)/dy = x: each input's gradient is the other input, scaled."""
    x, y = inputs
    return y * grad_output, x * grad_output


def add_forward(x: Array, y: Array) -> Array:
    return x + y


def add_backward(inputs: tuple[Array, Array], grad_output: Array) -> tuple[Array, Array]:
    """The local gradients of a sum are 1: the add gate passes the gradient on unchanged."""
    del inputs
    return grad_output, grad_output


def max_forward(x: Array, y: Array) -> Array:
    return jnp.maximum(x, y)


def max_backward(inputs: tuple[Array, Array], grad_output: Array) -> tuple[Array, Array]:
    """The max gate routes the whole gradient to the larger input (to x on a tie)."""
    x, y = inputs
    x_wins = x >= y
    return jnp.where(x_wins, grad_output, 0.0), jnp.where(x_wins, 0.0, grad_output)


def sigmoid_forward(x: Array) -> Array:
    return 1.0 / (1.0 + jnp.exp(-x))


def sigmoid_backward(inputs: tuple[Array], grad_output: Array) -> tuple[Array]:
    """sigma'(x) = sigma(x) * (1 - sigma(x))."""
    (x,) = inputs
    s = sigmoid_forward(x)
    return (s * (1.0 - s) * grad_output,)


multiply = Gate("multiply", multiply_forward, multiply_backward)
add = Gate("add", add_forward, add_backward)
maximum = Gate("max", max_forward, max_backward)
sigmoid = Gate("sigmoid", sigmoid_forward, sigmoid_backward)

GATES: dict[str, Gate] = {g.name: g for g in (multiply, add, maximum, sigmoid)}


# Circuits ---------------------------------------------------------------------------


class Node(NamedTuple):
    """One gate in a circuit: it reads the wires named `inputs` and drives `output`."""

    gate: Gate
    inputs: tuple[str, ...]
    output: str


Circuit = tuple[Node, ...]  # nodes in an order where every wire is driven before it is read


def forward(circuit: Circuit, inputs: Mapping[str, Array]) -> dict[str, Array]:
    """The value on every wire of the circuit, given the values of its input wires."""
    wires = dict(inputs)
    for node in circuit:
        wires[node.output] = node.gate.forward(*(wires[name] for name in node.inputs))
    return wires


def backward(
    circuit: Circuit, wires: Mapping[str, Array], grad_output: Array = 1.0
) -> dict[str, Array]:
    """Backpropagation: the gradient of the circuit's last output on every wire.

    `wires` are the values `forward` computed; `grad_output` is the pull on the last
    output (1.0 for the plain derivative). A wire read by several gates collects the
    sum of the gradients they send back.
    """
    grads: dict[str, Array] = {circuit[-1].output: grad_output}
    for node in reversed(circuit):
        grad = grads.get(node.output, 0.0)
        input_grads = node.gate.backward(tuple(wires[name] for name in node.inputs), grad)
        for name, g in zip(node.inputs, input_grads, strict=True):
            grads[name] = grads[name] + g if name in grads else g
    return grads


def circuit_inputs(circuit: Circuit) -> tuple[str, ...]:
    """The wires no gate drives, in order of first use: the circuit's inputs."""
    driven = {node.output for node in circuit}
    names: list[str] = []
    for node in circuit:
        names += [n for n in node.inputs if n not in driven and n not in names]
    return tuple(names)


def as_function(circuit: Circuit) -> Callable[..., Array]:
    """The circuit as a plain function of its inputs (in `circuit_inputs` order)."""
    names = circuit_inputs(circuit)
    output = circuit[-1].output

    def f(*args: Array) -> Array:
        return forward(circuit, dict(zip(names, args, strict=True)))[output]

    return f


# f(x, y, z) = (x + y) * z, the first circuit with two gates (section "Backpropagation").
ADD_MULTIPLY: Circuit = (
    Node(add, ("x", "y"), "q"),
    Node(multiply, ("q", "z"), "f"),
)

# The single neuron f = sigmoid(a*x + b*y + c) (section "Example: Single Neuron").
NEURON: Circuit = (
    Node(multiply, ("a", "x"), "ax"),
    Node(multiply, ("b", "y"), "by"),
    Node(add, ("ax", "by"), "ax+by"),
    Node(add, ("ax+by", "c"), "s"),
    Node(sigmoid, ("s",), "f"),
)


# Improving the output without and with gradients ------------------------------------


def random_local_search(
    f: Callable[..., Array],
    args: Sequence[float],
    key: jax.Array,
    tweak: float = 0.01,
    tries: int = 100,
) -> tuple[tuple[float, ...], float]:
    """Strategy #1: tweak every input by up to `tweak` at random, keep the best try.

    Returns the best inputs found and the output there.
    """
    start = jnp.asarray(args)
    candidates = start + tweak * jax.random.uniform(
        key, (tries, len(args)), minval=-1.0, maxval=1.0, dtype=start.dtype
    )
    outputs = jax.vmap(lambda c: f(*c))(candidates)
    best = int(jnp.argmax(outputs))
    return tuple(float(v) for v in candidates[best]), float(outputs[best])


def numerical_gradient(
    f: Callable[..., Array], args: Sequence[Array], h: float = 1e-4, central: bool = True
) -> tuple[float, ...]:
    """Strategy #2: the derivative on each input from nudging it by `h`.

    `central=False` is the text's forward difference (f(x + h) - f(x)) / h;
    the default central difference (f(x + h) - f(x - h)) / 2h is exact to O(h^2).
    """
    grads = []
    for i in range(len(args)):

        def nudged(delta: float, i: int = i) -> Array:
            return f(*(a + delta if j == i else a for j, a in enumerate(args)))

        if central:
            grads.append(float((nudged(h) - nudged(-h)) / (2 * h)))
        else:
            grads.append(float((nudged(h) - f(*args)) / h))
    return tuple(grads)


class PrecisionError(ValueError):
    """A function whose output is less precise than the gradient check needs."""


def gradient_check(
    fn: Callable[[Any], Array],
    params: Any,
    *,
    h: float = 1e-6,
    num_checks: int | None = 20,
    key: jax.Array | None = None,
    float64: bool = True,
) -> float:
    """The relative error between `jax.grad(fn)` and central differences of `fn`.

    `fn` maps a pytree of parameters to a scalar (a loss). In each parameter array,
    `num_checks` coordinates chosen at random by `key` (all of them when None or when
    the array is smaller) are nudged by +-h. For each array the error is
    ||g_analytic - g_numeric|| / max(||g_analytic|| + ||g_numeric||, floor), the norms
    taken over the chosen coordinates (0 where both are zero); the largest over the arrays
    is returned, so a wrong bias gradient is not hidden by large weight gradients.

    The floor is the size below which central differences cannot resolve a gradient to
    better than sqrt(eps) of it: each difference carries the roundoff of its two losses,
    about eps * |loss| / h, and the floor is the norm of those roundoffs over sqrt(eps).
    An array whose gradients are as small as that roundoff (a softmax bias at confident
    predictions, ~1e-8) is measured against the floor, so the roundoff shows as about
    sqrt(eps) (1.5e-8 in float64) instead of as a relative error near 1; a wrong gradient
    still shows, scaled down where the array's gradient is smaller than the floor: an
    error of size d there reads as d / floor, so at a tolerance tol an array's gradient is
    certified only down to errors of about tol * floor (at h = 1e-6 and a loss near 2,
    a floor near 0.03: errors above ~3e-8 fail a tolerance of 1e-6; a larger h lowers
    the floor, as roundoff falls with 1/h).

    Sound gradients give ~1e-8 or less in float64 (the default, which casts `params`
    and enables x64 for the check), so compare with a tolerance near 1e-6 (as
    `experiments.circuits --check` does); a wrong gradient in a well-sized array, or a
    kink (ReLU, max) within h of a nudged point, gives far more. Raises `PrecisionError` when `fn`
    returns less than float64 although `float64` is set (a cast inside it), since
    finite differences of a rounded output measure the rounding, not the gradient.
    """
    key = jax.random.PRNGKey(0) if key is None else key
    with jax.enable_x64(float64):
        if float64:
            params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)
            out = jax.eval_shape(fn, params)
            if out.dtype != jnp.float64:
                raise PrecisionError(
                    f"the function returns {out.dtype} from float64 parameters (a cast "
                    "inside it), so finite differences cannot resolve its gradient in float64"
                )
        flat, unravel = ravel_pytree(params)
        analytic, _ = ravel_pytree(jax.jit(jax.grad(fn))(params))  # one program, not op by op
        analytic = np.asarray(analytic)

        @jax.jit
        def nudged_loss(index: jax.Array, delta: jax.Array) -> jax.Array:
            return fn(unravel(flat.at[index].add(delta)))

        worst = 0.0
        offset = 0
        for leaf in jax.tree.leaves(params):
            size = int(np.prod(np.shape(leaf)))
            if num_checks is None or num_checks >= size:
                coords = np.arange(size)
            else:
                key, sub = jax.random.split(key)
                # NumPy draws them from the key's bits: one eager choice per array shape
                # would compile a program of its own.
                rng = np.random.default_rng(np.asarray(jax.random.key_data(sub)))
                coords = rng.choice(size, num_checks, replace=False)
            coords = coords + offset
            offset += size
            plus = np.array([nudged_loss(c, h) for c in coords.tolist()])
            minus = np.array([nudged_loss(c, -h) for c in coords.tolist()])
            numeric = (plus - minus) / (2 * h)
            eps = np.finfo(numeric.dtype).eps
            roundoff = eps * np.maximum(np.abs(plus), np.abs(minus)) / h
            exact = analytic[coords]
            scale = max(
                np.linalg.norm(exact) + np.linalg.norm(numeric),
                np.linalg.norm(roundoff) / np.sqrt(eps),
            )
            if scale > 0:
                worst = max(worst, float(np.linalg.norm(exact - numeric) / scale))
        return worst
