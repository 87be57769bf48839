"""Two processes with four CPU devices each train like one process with eight."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from launch import local_cluster

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(ROOT, "tests", "multiprocess_worker.py")


def run_single(out_dir, devices):
    env = local_cluster.process_env(0, 1, "unused:0", devices, "cpu")
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(name)
    subprocess.run([sys.executable, WORKER, str(out_dir)], env=env, check=True, timeout=120)
    return np.load(out_dir / "params.npz")


@pytest.fixture(scope="module")
def two_by_four(tmp_path_factory):
    out = tmp_path_factory.mktemp("two_by_four")
    logs = tmp_path_factory.mktemp("two_by_four_logs")
    code = local_cluster.launch(
        [sys.executable, WORKER, str(out)],
        num_processes=2,
        devices_per_process=4,
        log_dir=str(logs),
        timeout_s=120,
        quiet=True,
    )
    assert code == 0, (logs / "process_0.log").read_text() + (logs / "process_1.log").read_text()
    return out


def test_two_processes_match_one_process_with_eight_devices(two_by_four, tmp_path):
    multi = np.load(two_by_four / "params.npz")
    single = run_single(tmp_path, devices=8)
    assert int(multi["num_processes"]) == 2 and int(single["num_processes"]) == 1
    assert int(multi["num_devices"]) == int(single["num_devices"]) == 8
    for name in ("w", "b", "loss"):
        np.testing.assert_allclose(multi[name], single[name], rtol=1e-5, atol=1e-6)
    # The steps moved the parameters, so the comparison is not vacuous.
    assert np.abs(multi["w"] - np.random.default_rng(0).normal(size=(6, 3))).max() > 1e-2


def test_only_process_zero_writes(two_by_four):
    """Both processes reached the end and handed every step's metrics to the writer; the
    files hold them once."""
    assert sorted(os.listdir(two_by_four / "ran")) == ["process_0", "process_1"]
    lines = (two_by_four / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]
    assert sorted(os.listdir(two_by_four)) == ["metrics.jsonl", "params.npz", "ran", "tensorboard"]


def test_join_cluster_runs_a_module_as_a_cluster_member(two_by_four, tmp_path):
    code = local_cluster.launch(
        [sys.executable, "-m", "launch.join_cluster", "tests.multiprocess_worker", str(tmp_path)],
        num_processes=2,
        devices_per_process=4,
        log_dir=str(tmp_path / "logs"),
        timeout_s=120,
        quiet=True,
    )
    assert code == 0
    joined, direct = np.load(tmp_path / "params.npz"), np.load(two_by_four / "params.npz")
    assert int(joined["num_processes"]) == 2
    np.testing.assert_array_equal(joined["w"], direct["w"])


def test_join_cluster_outside_a_cluster_says_so_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "SLURM_", "OMPI_"))}
    done = subprocess.run(
        [sys.executable, "-m", "launch.join_cluster", "tests.multiprocess_worker", str(tmp_path)],
        env={**env, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("join_cluster: error: no cluster found")
    assert done.stderr.count("\n") == 1 and not os.listdir(tmp_path)


def test_a_failing_process_stops_the_cluster(tmp_path):
    code = local_cluster.launch(
        [
            sys.executable,
            "-c",
            "import os, sys, time; os.environ['JAX_PROCESS_ID'] == '1' "
            "and sys.exit(3); time.sleep(60)",
        ],
        num_processes=2,
        devices_per_process=1,
        log_dir=str(tmp_path),
        timeout_s=30,
        quiet=True,
    )
    assert code == 3


def test_process_env_sets_the_cluster_contract():
    env = local_cluster.process_env(
        1, 2, "127.0.0.1:1234", 4, "cpu", base={"XLA_FLAGS": "--xla_foo=1"}
    )
    assert env["JAX_COORDINATOR_ADDRESS"] == "127.0.0.1:1234"
    assert env["JAX_NUM_PROCESSES"] == "2"
    assert env["JAX_PROCESS_ID"] == "1"
    assert env["JAX_PLATFORMS"] == "cpu"
    assert env["XLA_FLAGS"].split() == [
        "--xla_foo=1",
        "--xla_force_host_platform_device_count=4",
    ]


def test_a_one_process_cluster_runs_its_module_through_join_cluster(tmp_path):
    """launch.local_cluster --processes=1 sets JAX_NUM_PROCESSES=1: join_cluster runs the
    module as it is, instead of looking for a cluster that was never meant."""
    logs = tmp_path / "logs"
    code = local_cluster.launch(
        [sys.executable, "-m", "launch.join_cluster", "tests.multiprocess_worker", str(tmp_path)],
        num_processes=1,
        devices_per_process=1,
        log_dir=str(logs),
        timeout_s=120,
        quiet=True,
    )
    assert code == 0, (logs / "process_0.log").read_text()
    assert (tmp_path / "params.npz").exists()


def test_join_cluster_names_a_module_that_is_not_there_in_one_line():
    done = subprocess.run(
        [sys.executable, "-m", "launch.join_cluster", "experiments.nope"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert done.stderr == "join_cluster: error: no module named 'experiments.nope'\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--timeout_s=-1"], "--timeout_s must be positive, got -1"),
        (["--log_dir={file}"], "is a file; name a folder"),
    ],
)
def test_local_cluster_refuses_bad_settings_in_one_line(args, message, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    argv = [a.format(file=tmp_path / "file") for a in args]
    assert local_cluster.main([*argv, "launch.join_cluster", "experiments.circuits"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("local_cluster: error: ") and message in err
