"""A blind-spot study resumed after its first target draws the same figures as one run
straight through: the first target's pictures, kept beside its results. The attacks are
faked, so nothing is trained or attacked."""

import types

import jax.numpy as jnp
import numpy as np

from experiments import adversarial as experiment
from lib.core import data, plots


def linear(params, x):
    return x.reshape(len(x), -1) @ params


def fake_target(i, root):
    return types.SimpleNamespace(
        name=f"net{i}",
        workdir=root / f"run{i}",
        checkpoint_notice=None,
        apply=linear,
        params=jnp.full((4, 3), float(i)),
    )


def fake_attack(target, test, config, say):
    """A result for the table and pictures that tell the targets apart."""
    i = float(target.params[0, 0])
    out = {"workdir": str(target.workdir), "net": target.name, "clean_error": 0.1,
           "fgsm": {"0.1": 0.5}, "pgd": {"0.1": 0.6},
           "distortion": {"mean_rms": 0.05, "found": 2, "of": 2},
           "fooling_confidence": [0.99, 0.98, 0.97]}  # fmt: skip
    pictures = {
        "clean": np.full((2, 2, 2, 1), i),
        "adversarial": np.full((2, 2, 2, 1), i),
        "adversarial_labels": np.array([0, 1]),
        "minimum": np.full((2, 2, 2, 1), i),
        "minimum_labels": np.array([1, 2]),
        "fooling": np.full((3, 2, 2, 1), i),
    }
    return out, pictures


def test_a_resumed_study_draws_the_first_targets_pictures(tmp_path, monkeypatch):
    test = data.Split(np.zeros((6, 2, 2, 1), np.float32), np.zeros(6, np.int32))
    monkeypatch.setattr(data, "load", lambda *a, **k: types.SimpleNamespace(test=test))
    attacked, drawn = [], []

    def attack(target, *args):
        attacked.append(target.name)
        return fake_attack(target, *args)

    monkeypatch.setattr(experiment, "attack", attack)
    monkeypatch.setattr(plots, "error_vs_eps", lambda *a, **k: None)
    monkeypatch.setattr(
        plots, "adversarial_examples", lambda shown, path, title: drawn.append((shown, title))
    )
    monkeypatch.setattr(plots, "image_row", lambda images, *a, title: drawn.append((images, title)))
    config = {"dataset": "mnist", "eps": [0.1], "transfer_eps": 0.1, "test_size": 6,
              "train": ["none"]}  # fmt: skip
    targets = [fake_target(i, tmp_path) for i in (0, 1)]

    def study():
        drawn.clear()
        experiment._study(config, tmp_path / "study", targets, False, data.load)
        return [(np.asarray(shown["clean"] if isinstance(shown, dict) else shown), title)
                for shown, title in drawn]  # fmt: skip

    (tmp_path / "study").mkdir()
    straight = study()
    assert attacked == ["net0", "net1"] and len(straight) == 2
    assert all(np.all(images == 0) and title.startswith("net0") for images, title in straight)
    # Interrupted after the first target: the rerun attacks only the second.
    (tmp_path / "study" / "targets" / "1.json").unlink()
    attacked.clear()
    resumed = study()
    assert attacked == ["net1"]
    assert len(resumed) == len(straight)
    for (a, title_a), (b, title_b) in zip(resumed, straight, strict=True):
        np.testing.assert_array_equal(a, b)
        assert title_a == title_b
    # A first target kept without its pictures is attacked again to draw them.
    (tmp_path / "study" / "targets" / "0.npz").unlink()
    attacked.clear()
    again = study()
    assert attacked == ["net0"] and [t for _, t in again] == [t for _, t in straight]
