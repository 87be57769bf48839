"""Attacks on a classifier: budgets kept, losses raised, Szegedy's minimum distortion
against the closed form of a linear model, and fooling images reaching their confidence."""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from commands import ROOT, run_module, start_module

from lib.adversarial import attacks as adversarial
from lib.core.errors import UserError


def linear(params, x):
    return x.reshape(len(x), -1) @ params["w"] + params["b"]


@pytest.fixture(scope="module")
def softmax_regression(mnist_small):
    """A shallow softmax classifier on 2,000 MNIST images (about 88% on the test set)."""
    x, y = jnp.asarray(mnist_small.train.images), jnp.asarray(mnist_small.train.labels)
    params = {"w": jnp.zeros((784, 10)), "b": jnp.zeros(10)}
    opt = optax.adam(0.01)

    @jax.jit
    def step(params, state):
        loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(linear(p, x), y).mean()
        updates, state = opt.update(jax.grad(loss)(params), state)
        return optax.apply_updates(params, updates), state

    state = opt.init(params)
    for _ in range(200):
        params, state = step(params, state)
    test = mnist_small.test.take(1000)
    return params, jnp.asarray(test.images), jnp.asarray(test.labels)


def error(params, x, y):
    return float(jnp.mean(adversarial.predictions(linear, params, x) != y))


def mean_loss(params, x, y):
    return float(optax.softmax_cross_entropy_with_integer_labels(linear(params, x), y).mean())


def test_fgsm_keeps_its_budget_and_fools_a_shallow_softmax(softmax_regression):
    params, x, y = softmax_regression
    assert error(params, x, y) < 0.15
    x_adv = adversarial.fgsm(linear, params, x, y, 0.25)
    assert x_adv.shape == x.shape and float(jnp.abs(x_adv - x).max()) <= 0.25 + 1e-6
    assert 0.0 <= float(x_adv.min()) and float(x_adv.max()) <= 1.0
    assert error(params, x_adv, y) > 0.9  # Goodfellow et al.: 99.9% for a shallow softmax
    small = adversarial.fgsm(linear, params, x, y, 0.05)
    assert mean_loss(params, x, y) < mean_loss(params, small, y) < mean_loss(params, x_adv, y)


def test_pgd_stays_in_the_ball_and_beats_fgsm(softmax_regression):
    params, x, y = softmax_regression
    eps = 0.05
    x_pgd = adversarial.pgd(linear, params, x, y, eps, 20, eps / 4, jax.random.key(0))
    assert float(jnp.abs(x_pgd - x).max()) <= eps + 1e-6
    assert 0.0 <= float(x_pgd.min()) and float(x_pgd.max()) <= 1.0
    x_fgsm = adversarial.fgsm(linear, params, x, y, eps)
    assert mean_loss(params, x_pgd, y) >= mean_loss(params, x_fgsm, y) - 1e-3
    assert error(params, x_pgd, y) > error(params, x, y)


def test_minimum_distortion_matches_a_linear_models_closed_form():
    # Two classes, logits (0, w.x + b): at x = 0.5 the net says class 0 with margin 1, and
    # the smallest L2 step to class 1 is 1 / |w|, along w (inside the box here).
    w = jax.random.normal(jax.random.key(1), (16,))
    w = 4.0 * w / jnp.linalg.norm(w)
    x = jnp.full((3, 4, 4, 1), 0.5)
    b = -1.0 - 0.5 * w.sum()
    params = {"w": jnp.stack([jnp.zeros(16), w], 1), "b": jnp.array([0.0, b])}
    target = jnp.ones(3, jnp.int32)
    x_adv, found = adversarial.minimum_distortion(linear, params, x, target)
    assert bool(found.all())
    assert bool((adversarial.predictions(linear, params, x_adv) == 1).all())
    distance = jnp.sqrt(jnp.sum((x_adv - x) ** 2, axis=(1, 2, 3)))
    np.testing.assert_array_less(0.25 - 1e-3, distance)  # never below the closed form 1/|w|
    np.testing.assert_array_less(distance, 0.25 * 1.1)
    rms = adversarial.rms_distortion(x, x_adv)
    np.testing.assert_allclose(rms, distance / 4, rtol=1e-5)


def test_minimum_distortion_reports_targets_it_cannot_reach():
    params = {"w": jnp.zeros((16, 2)), "b": jnp.array([5.0, 0.0])}  # always class 0
    x = jnp.full((2, 4, 4, 1), 0.5)
    x_adv, found = adversarial.minimum_distortion(
        linear, params, x, jnp.ones(2, jnp.int32), c_values=(1.0,), iterations=5
    )
    assert not bool(found.any())
    np.testing.assert_array_equal(x_adv, x)


@pytest.mark.parametrize("start", ["blank", "noise"])
def test_fooling_images_reach_near_certainty_for_every_class(softmax_regression, start):
    params, _, _ = softmax_regression
    shape = (10, 28, 28, 1)
    begin = jnp.zeros(shape) if start == "blank" else jax.random.uniform(jax.random.key(2), shape)
    images, confidence = adversarial.fooling_images(linear, params, begin, jnp.arange(10))
    assert images.shape == shape and 0.0 <= float(images.min()) <= float(images.max()) <= 1.0
    assert bool((confidence >= 0.9999).all()), confidence
    assert bool((adversarial.predictions(linear, params, images) == jnp.arange(10)).all())


@pytest.mark.parametrize("label", [10, -1])
def test_a_target_label_out_of_range_is_refused(softmax_regression, label):
    params, _, _ = softmax_regression
    x, labels = jnp.zeros((2, 28, 28, 1)), jnp.array([3, label])
    message = rf"labels must be in \[0, 10\), the net's classes; got {label}"
    with pytest.raises(ValueError, match="fooling " + message):
        adversarial.fooling_images(linear, params, x, labels)
    with pytest.raises(ValueError, match="target " + message):
        adversarial.minimum_distortion(linear, params, x, labels)


@pytest.fixture(scope="module")
def two_targets(tmp_path_factory):
    """Two finished shallow runs (seeds 0 and 1) on 2,000 images, one epoch each."""
    from experiments import mnist_convnet

    root = tmp_path_factory.mktemp("targets")
    for seed in (0, 1):
        mnist_convnet.run(
            {"net": "shallow", "train_size": 2000, "validation_size": 1000, "test_size": 1000,
             "epochs": 1, "seed": seed},
            str(root / str(seed)), verbose=False,
        )  # fmt: skip
    return [root / "0", root / "1"]


SMALL = ["--test_size=60", "--distortion_size=4", "--pgd_steps=3", "--lbfgs_iterations=5"]


def test_the_experiment_attacks_finished_runs_and_resumes_after_sigkill(
    two_targets, tmp_path, capsys
):
    """Killed (SIGKILL) once the first target is done, the study goes on from the second
    on a rerun (the killed process's lock does not block it); rerun once finished, it
    redoes nothing; with another budget, it refuses the workdir."""
    args = [f"--targets={','.join(map(str, two_targets))}", f"--workdir={tmp_path}", *SMALL]
    killed = start_module("experiments.adversarial", *args, "--eps=0.1,0.3")
    deadline = time.monotonic() + 300
    while not (tmp_path / "targets" / "0.json").exists() and killed.poll() is None:
        assert time.monotonic() < deadline, "the first target took too long"
        time.sleep(0.05)
    killed.kill()
    killed.wait()
    assert not (tmp_path / "summary.json").exists()  # killed between the two targets
    done = run_module("experiments.adversarial", *args, "--eps=0.1,0.3")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("done before") == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    names = list(summary["targets"])
    assert len(names) == 2 and all(name.startswith("shallow (") for name in names)
    for name in names:
        r = summary["targets"][name]
        assert r["fgsm"]["0.3"] > r["clean_error"] and r["pgd"]["0.3"] >= r["pgd"]["0.1"]
        assert r["distortion"]["of"] == 4 and len(r["fooling_confidence"]) == 10
        # The transfer table's diagonal is the net's own FGSM error at --transfer_eps.
        assert summary["transfer"][name][name] == r["fgsm"]["0.1"]
    for picture in ("examples.png", "fooling.png", "error_vs_eps.png"):
        assert (tmp_path / picture).stat().st_size > 5_000
    assert "Transfer" in (tmp_path / "table.md").read_text()
    # The same study again, in this process: nothing redone; another budget is refused.
    from experiments import adversarial as experiment

    small = {"test_size": 60, "distortion_size": 4, "pgd_steps": 3, "lbfgs_iterations": 5,
             "targets": [str(t) for t in two_targets], "workdir": str(tmp_path)}  # fmt: skip
    capsys.readouterr()
    experiment.run({**small, "eps": [0.1, 0.3]})
    assert capsys.readouterr().out.count("done before") == 2
    with pytest.raises(UserError, match="eps"):
        experiment.run({**small, "eps": [0.2]}, verbose=False)


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--eps=0.1,2", "error: --eps=0.1,2.0 must be in (0, 1]"),
        ("--pgd_steps=0", "error: --pgd_steps=0 must be >= 1"),
        ("--test_size=50", "error: --distortion_size=100 must be at most --test_size=50"),
        ("--targets=no/such/run", "error: no/such/run holds no run of experiments.mnist_convnet"),
        ("--train=none,mixup", "error: --train=none,mixup must be one of none, fgsm, pgd"),
        ("--train=fgsm,fgsm", "error: --train names a net twice"),
        ("--adversarial_eps=0", "error: --adversarial_eps=0.0 must be in (0, 1]"),
        ("stray", "error: unexpected argument 'stray'"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, flag, message):
    done = run_module("experiments.adversarial", f"--workdir={tmp_path / 'w'}", flag)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), done.stderr
    assert not (tmp_path / "w").exists()


def test_a_target_must_be_a_finished_run(two_targets, tmp_path):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    for name in ("config.json", "checkpoints"):
        (unfinished / name).symlink_to(two_targets[0] / name)
    done = run_module(
        "experiments.adversarial", f"--targets={unfinished}", f"--workdir={tmp_path / 'w'}"
    )
    assert done.returncode == 1 and "holds an unfinished run" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "w").exists()


def test_targets_of_one_architecture_share_their_compiled_attacks(two_targets, mnist_small):
    """Two runs of the same net: one compiled FGSM serves both (their `apply`s are equal
    and their parameters on the same device), so a study of many seeds compiles once."""
    from experiments.adversarial import Target

    first, second = (Target(workdir) for workdir in two_targets)
    assert first.apply == second.apply and hash(first.apply) == hash(second.apply)
    x, y = jnp.asarray(mnist_small.test.images[:8]), jnp.asarray(mnist_small.test.labels[:8])
    before = adversarial.fgsm._cache_size()
    for target in (first, second):
        adversarial.fgsm(target.apply, target.params, x, y, 0.1)
    assert adversarial.fgsm._cache_size() == before + 1


def test_the_study_loads_its_dataset_once_for_all_its_targets(two_targets, tmp_path, monkeypatch):
    from experiments import adversarial as experiment
    from lib.core import data

    loaded, load = [], data.load
    monkeypatch.setattr(data, "load", lambda *a, **k: loaded.append(a) or load(*a, **k))
    summary = experiment.run(
        {"targets": [str(t) for t in two_targets], "eps": (0.1,), "test_size": 20,
         "distortion_size": 2, "pgd_steps": 1, "lbfgs_iterations": 1},
        str(tmp_path), verbose=False,
    )  # fmt: skip
    assert len(summary["targets"]) == 2
    assert len(loaded) == 1, "each target, or the attacks, loaded the dataset again"


def test_an_ensemble_run_is_refused_with_what_to_attack_instead(tmp_path):
    from experiments.adversarial import Target

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "summary.json").write_text("{}")
    (tmp_path / "config.json").write_text(json.dumps({"net": "relu", "ensemble": 3}))
    with pytest.raises(UserError, match=r"ensemble 3\): attack a run trained with --ensemble=1"):
        Target(tmp_path)


def test_a_target_with_a_damaged_newest_checkpoint_is_attacked_at_the_step_before(tmp_path):
    """The target's parameters come through lib.core.checkpoint: a newest step that cannot
    be read is passed over, with a notice, for the intact step before it."""
    from experiments import mnist_convnet
    from experiments.adversarial import Target
    from lib.core.checkpoint import Checkpointer

    mnist_convnet.run(
        {"net": "shallow", "train_size": 500, "validation_size": 100, "test_size": 100,
         "epochs": 2, "batch_size": 50},
        str(tmp_path), verbose=False,
    )  # fmt: skip
    first, newest = Checkpointer(tmp_path / "checkpoints").all_steps()
    assert Target(tmp_path).checkpoint_notice is None
    record = tmp_path / "checkpoints" / str(newest) / "record" / "metadata"
    record.write_text(record.read_text()[:10])
    target = Target(tmp_path)
    assert target.checkpoint_notice.startswith(f"damaged checkpoints passed over: step {newest}")
    assert target.checkpoint_notice.endswith(f"attacking step {first}")
    saved = ocp.CheckpointManager(tmp_path / "checkpoints")
    kept = saved.restore(first, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    saved.close()
    for a, b in zip(
        jax.tree.leaves(target.params), jax.tree.leaves(kept.state["params"]), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_target_of_three_classes_gets_wrong_labels_and_fooling_images_of_its_own(
    tmp_path, monkeypatch
):
    """A net of another dataset's classes: the wrong labels of the minimum distortion and
    the fooling images' classes are its 3, not MNIST's 10."""
    from fake_tfds import colour_splits

    from experiments import adversarial as experiment
    from experiments import mnist_convnet
    from lib.core import data

    monkeypatch.setattr(data, "load", lambda *a, **k: colour_splits(n_train=200, n_eval=60))
    monkeypatch.setattr(data, "training_size", lambda *a, **k: None)
    mnist_convnet.run(
        {"net": "shallow", "dataset": "cifar10", "epochs": 1, "batch_size": 20},
        str(tmp_path / "target"), verbose=False,
    )  # fmt: skip
    summary = experiment.run(
        {"targets": [str(tmp_path / "target")], "eps": (0.1,), "test_size": 60,
         "distortion_size": 4, "pgd_steps": 2, "lbfgs_iterations": 3},
        str(tmp_path / "study"), verbose=False,
    )  # fmt: skip
    result = summary["targets"]["shallow"]
    assert len(result["fooling_confidence"]) == 3 and result["distortion"]["of"] == 4


def _fgsm_error(workdir, eps: float) -> float:
    from experiments.adversarial import Target
    from lib.core import data

    target, test = Target(workdir), data.mnist(order="book").test.take(1000)
    x, y = jnp.asarray(test.images), jnp.asarray(test.labels)
    return error_of(target, adversarial.fgsm(target.apply, target.params, x, y, eps), y)


def error_of(target, x, y) -> float:
    return float(jnp.mean(adversarial.predictions(target.apply, target.params, x) != y))


def test_adversarial_training_lowers_the_error_under_attack(tmp_path):
    """Goodfellow et al.'s FGSM mix, on a short run of the shallow net: the same net, seed
    and data, trained with and without it; FGSM at the training budget then fools the
    adversarially trained net far less often."""
    from experiments import mnist_convnet

    base = {"net": "shallow", "train_size": 5000, "epochs": 3, "batch_size": 50,
            "optimizer": "nesterov", "learning_rate": 0.05, "l2": 0.0}  # fmt: skip
    plain = mnist_convnet.run(base, str(tmp_path / "plain"), verbose=False)
    hardened = mnist_convnet.run(
        {**base, "adversarial_training": "fgsm", "adversarial_eps": 0.1},
        str(tmp_path / "fgsm"),
        verbose=False,
    )
    assert plain["test_accuracy"] > 0.8 and hardened["test_accuracy"] > 0.75
    before, after = _fgsm_error(tmp_path / "plain", 0.1), _fgsm_error(tmp_path / "fgsm", 0.1)
    assert before > 0.6 and after < before - 0.15, (before, after)


def test_the_experiment_trains_its_own_target_by_pgd(tmp_path, monkeypatch):
    """Madry et al.'s PGD training, on two short runs of the shallow net the study trains
    itself, with and without it: PGD at the training budget then fools the PGD-trained
    net far less often. Measured on CPU over training seeds 0, 1 and 2: errors under PGD
    of 84-87% plain and 59-62% PGD-trained (clean: 12-13% and 35-38%)."""
    from experiments import adversarial as experiment

    # The quick recipe's relu net, as the shallow one, so the attacks take seconds.
    recipe = {"net": "shallow", "batch_size": 50, "optimizer": "nesterov",
              "learning_rate": 0.05, "l2": 0.0}  # fmt: skip
    monkeypatch.setattr(experiment, "QUICK_RECIPE", recipe)
    summary = experiment.run(
        {"train": ("none", "pgd"), "train_size": 5000,
         "target_epochs": 2, "adversarial_eps": 0.1, "adversarial_steps": 2, "eps": (0.1,),
         "test_size": 500, "distortion_size": 4, "pgd_steps": 3, "lbfgs_iterations": 5},
        str(tmp_path), verbose=False,
    )  # fmt: skip
    assert list(summary["targets"]) == ["shallow", "shallow, PGD-trained (eps 0.1)"]
    config = json.loads((tmp_path / "target-pgd" / "config.json").read_text())
    assert config["adversarial_training"] == "pgd" and config["adversarial_steps"] == 2
    plain, hardened = summary["targets"].values()
    assert plain["clean_error"] < 0.2 and hardened["clean_error"] < 0.5
    before, after = plain["pgd"]["0.1"], hardened["pgd"]["0.1"]
    assert before > 0.7 and after < before - 0.15, (before, after)


def test_the_training_budget_grows_over_its_warmup_and_bad_adversaries_are_refused():
    from lib.adversarial.training import Adversary

    grows = Adversary("pgd", eps=0.3, warmup_steps=10)
    assert [float(grows.budget(s)) for s in (0, 4, 9, 50)] == pytest.approx([0.03, 0.15, 0.3, 0.3])
    assert Adversary("fgsm", eps=0.3).budget(0) == 0.3
    for bad in ({"method": "cw"}, {"eps": 0.0}, {"clean_weight": 1.0}, {"steps": 0}):
        with pytest.raises(ValueError):
            Adversary(**{"method": "pgd", "eps": 0.3, **bad})


def test_readme_shows_the_kept_blind_spot_tables_as_their_summaries_give_them():
    """Each study kept in results/adversarial/<name>/ is in the README as the table its
    summary.json gives (the table the command printed)."""
    from experiments import adversarial as experiment

    readme = (ROOT / "README.md").read_text()
    kept = sorted((ROOT / "results" / "adversarial").glob("*/summary.json"))
    assert kept, "no kept study"
    for path in kept:
        text = experiment.table(json.loads(path.read_text()))
        assert text == (path.parent / "table.md").read_text().strip()
        assert f"<!-- adversarial table: {path.parent.name} -->\n{text}\n" in readme
