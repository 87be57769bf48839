"""Adversarial training: a net trained on adversarial examples of itself, made afresh at
every step from its current parameters.

- "fgsm": Goodfellow, Shlens and Szegedy 2014 ("Explaining and harnessing adversarial
  examples", section 5): the cost alpha L(x) + (1 - alpha) L(x + eps sign grad_x L(x)),
  alpha 0.5 and eps 0.25 on MNIST.
- "pgd": Madry et al. 2017 ("Towards deep learning models resistant to adversarial
  attacks"): training on projected-gradient-descent examples from a random start
  (alpha 0: adversarial examples only; eps 0.3 and 40 steps of 0.01 on MNIST).

An `Adversary` is hashable, so a compiled train step can be cached on it; the step
(`lib.nielsen.train.make_train_step`) calls `perturb` on each mini-batch and weighs the
clean and the adversarial cost by `clean_weight`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from lib.adversarial import attacks

METHODS = ("fgsm", "pgd")


@dataclasses.dataclass(frozen=True)
class Adversary:
    """How each training mini-batch is attacked.

    method: "fgsm" or "pgd"; eps: the L-inf budget; clean_weight: alpha, the clean
    cost's share (the adversarial cost has 1 - alpha); steps and step_size: PGD's
    (step_size default 2.5 eps / steps, as Madry et al. advise); warmup_steps: training
    steps over which the budget grows linearly from 0 to eps (0: eps from the start), so
    that a net which cannot yet tell the digits apart is not asked at once to tell them
    apart under the full attack (without it, PGD training of the book's small ReLU net at
    eps 0.25 stays at chance).
    """

    method: str
    eps: float
    clean_weight: float = 0.5
    steps: int = 7
    step_size: float | None = None
    warmup_steps: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        if not 0 < self.eps <= 1:
            raise ValueError(f"eps must be in (0, 1], got {self.eps}")
        if not 0 <= self.clean_weight < 1:
            raise ValueError(f"clean_weight must be in [0, 1), got {self.clean_weight}")
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be at least 0, got {self.warmup_steps}")

    def budget(self, step: jax.Array | int) -> jax.Array | float:
        """The L-inf budget at training step `step` (counted from 0)."""
        if not self.warmup_steps:
            return self.eps
        return self.eps * jnp.minimum(1.0, (step + 1) / self.warmup_steps)

    def perturb(
        self,
        apply: attacks.Apply,
        params: Any,
        x: jax.Array,
        y: jax.Array,
        key: jax.Array,
        step: jax.Array | int = 0,
    ) -> jax.Array:
        """Adversarial versions of x (labels y) against `apply` at `params`, at training
        step `step`'s budget, with no gradient flowing back to the parameters through them."""
        eps = self.budget(step)
        if self.method == "fgsm":
            x_adv = attacks.fgsm(apply, params, x, y, eps)
        else:
            scale = self.step_size / self.eps if self.step_size else 2.5 / self.steps
            x_adv = attacks.pgd(apply, params, x, y, eps, self.steps, scale * eps, key)
        return jax.lax.stop_gradient(x_adv)
