"""Sweeps: spec parsing, workdir names, skip and resume, failure isolation, the ranking.

The sweeps run tests/fake_experiment.py (declared by its settings, as the experiments
are; sub-second runs) in child processes, so its absl flags never enter this process's
flag registry.
"""

import ast
import fcntl
import json
import os
import signal
import subprocess
import time

import pytest
from commands import ROOT, run_module, start_module

from launch import results, sweep

FAKE = "tests.fake_experiment"


def run_sweep(sweep_dir, *args, check_rc=None):
    done = run_module("launch.sweep", FAKE, f"--sweep_dir={sweep_dir}", *args, timeout=120)
    if check_rc is not None:
        assert done.returncode == check_rc, done.stdout + done.stderr
    return done


def summary(sweep_dir, name):
    with open(os.path.join(sweep_dir, name, "summary.json")) as f:
        return json.load(f)


# ---------------------------------------------------------------- specs


def test_grid_values_and_ranges():
    assert sweep.parse_grid("learning_rate=0.01,0.03,0.1") == (
        "learning_rate",
        ["0.01", "0.03", "0.1"],
    )
    assert sweep.parse_grid("layers=64,64|128") == ("layers", ["64,64", "128"])
    assert sweep.parse_grid("seed=range:0:3") == ("seed", ["0", "1", "2"])
    assert sweep.parse_grid("seed=range:10:0:-5") == ("seed", ["10", "5"])
    assert sweep.parse_grid("dropout=linspace:0:0.5:3") == ("dropout", ["0", "0.25", "0.5"])
    assert sweep.parse_grid("lr=logspace:1e-3:1e-1:3") == ("lr", ["0.001", "0.01", "0.1"])


def test_grid_crosses_specs_in_command_line_order():
    runs = sweep.expand([("grid", "seed=0,1"), ("grid", "lr=0.1,0.3")])
    assert runs == [
        {"seed": "0", "lr": "0.1"},
        {"seed": "0", "lr": "0.3"},
        {"seed": "1", "lr": "0.1"},
        {"seed": "1", "lr": "0.3"},
    ]
    assert [sweep.run_name(r) for r in runs][:2] == ["seed=0,lr=0.1", "seed=0,lr=0.3"]


def test_random_search_is_deterministic_and_in_range():
    specs = [
        ("random", "lr=loguniform:1e-3:1e-1"),
        ("random", "seed=int:0:2"),
        ("random", "act=choice:relu,tanh"),
        ("random", "dropout=uniform:0.1:0.5"),
    ]
    runs = sweep.expand(specs, num_trials=30, sweep_seed=0)
    assert runs == sweep.expand(specs, num_trials=30, sweep_seed=0)
    assert runs != sweep.expand(specs, num_trials=30, sweep_seed=1)
    assert len(runs) == 30
    assert all(1e-3 <= float(r["lr"]) <= 1e-1 for r in runs)
    assert {r["seed"] for r in runs} == {"0", "1", "2"}  # both ends included
    assert {r["act"] for r in runs} == {"relu", "tanh"}
    assert all(0.1 <= float(r["dropout"]) <= 0.5 for r in runs)


def test_random_trials_cross_the_grid_and_repeated_draws_run_once():
    runs = sweep.expand([("random", "lr=loguniform:1e-3:1e-1"), ("grid", "seed=0,1")], num_trials=3)
    assert len(runs) == 6 and runs[0]["lr"] == runs[1]["lr"]
    assert len(sweep.expand([("random", "seed=int:0:1")], num_trials=20)) == 2


def test_run_names_are_stable_and_filesystem_safe():
    name = sweep.run_name({"data_dir": "/a b/c", "layers": "64,64", "lr": "1e-05"})
    assert name == "data_dir=_a_b_c,layers=64+64,lr=1e-05"
    long = sweep.run_name({"x": "y" * 500})
    assert len(long) < 200 and long == sweep.run_name({"x": "y" * 500})


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--grid", "lr"], "expected NAME=VALUES"),
        (["--grid", "lr="], "expected NAME=VALUES"),
        (["--grid", "=0.1"], "expected NAME=VALUES"),
        (["--grid", "l r=1"], "is not a flag name"),
        (["--grid", "lr=0.1,,0.3"], "empty value"),
        (["--grid", "seed=1,1"], "repeated"),
        (["--grid", "seed=range:0:x"], "not an integer"),
        (["--grid", "seed=range:3:0"], "range is empty"),
        (["--grid", "lr=logspace:0:1:3"], "positive"),
        (["--grid", "seed=1", "--grid", "seed=2"], "swept twice"),
        (["--random", "lr=normal:0:1", "--num_trials=2"], "expected uniform"),
        (["--random", "lr=loguniform:0:1", "--num_trials=2"], "LOW > 0"),
        (["--random", "lr=uniform:1:0", "--num_trials=2"], "LOW must be below HIGH"),
        (["--random", "lr=uniform:a:1", "--num_trials=2"], "is not a number"),
        (["--random", "lr=uniform:0:1"], "needs --num_trials"),
        (["--random", "lr=uniform:0:1", "--num_trials=0"], "at least 1"),
        ([], "nothing to sweep"),
        (["--grid", "seed=1", "--workdir=/tmp/x"], "--sweep_dir instead"),
        (["--grid", "seed=1", "stray"], "unexpected argument"),
        (["--grid", "seed=1", "--metric=test_accuracy"], "test metric"),
        (["--grid", "seed=1", "--parallel=0"], "at least 1"),
        (["--grid", "seed=1", "--gpus=0", "--mode=inprocess"], "inprocess"),
        (["--grid", "seed=1", "--gpus=a,b"], "GPU indices"),
        (["--random", "lr=uniform:0:1", "--num_trials=1", "--sweep_seed=-1"], "at least 0"),
    ],
)
def test_bad_specs_get_one_clear_line(argv, message, tmp_path, capsys):
    assert sweep.main([FAKE, f"--sweep_dir={tmp_path}", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("sweep: error: ") and message in err, err
    assert os.listdir(tmp_path) == []


def test_flags_the_module_rejects_fail_before_any_run(tmp_path):
    for args, message in [
        (["--grid", "lr=0.1"], "Unknown command line flag 'lr'"),
        (["--grid", "learning_rate=0.1,abc"], "--learning_rate=abc"),
        (["--grid", "epochs=2,0"], "--epochs=0 must be >= 1"),
        (["--grid", "seed=1", "--nosuch=1"], "Unknown command line flag 'nosuch'"),
    ]:
        done = run_sweep(tmp_path / "s", *args, check_rc=2)
        assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        assert not (tmp_path / "s").exists()
    done = run_module("launch.sweep", "no.such_module", "--sweep_dir=x", "--grid=a=1")
    assert (
        done.returncode == 2 and done.stderr == "sweep: error: no module named 'no.such_module'\n"
    )


# ---------------------------------------------------------------- running


def test_sweep_runs_skips_finished_runs_and_extends(tmp_path):
    d = tmp_path / "sweep"
    done = run_sweep(d, "--grid", "learning_rate=0.01,0.1", "--epochs=2", check_rc=0)
    assert "2 new" in done.stdout and "| 1 | 0.01 |" in done.stdout
    assert summary(d, "learning_rate=0.01")["attempts"] == 1
    done = run_sweep(d, "--grid", "learning_rate=0.01,0.1,0.001", "--epochs=2", check_rc=0)
    assert done.stdout.count("finished before, skipped") == 2
    for name in ("learning_rate=0.01", "learning_rate=0.1", "learning_rate=0.001"):
        assert summary(d, name)["attempts"] == 1
    assert (d / "results.csv").read_text().count("\n") == 4
    assert (d / "plots" / "best_val_accuracy_vs_learning_rate.png").stat().st_size > 1000
    with open(d / "learning_rate=0.01" / "config.json") as f:
        assert json.load(f)["epochs"] == 2  # the shared flag reached the run


def test_changed_shared_flags_need_a_new_sweep_dir(tmp_path):
    run_sweep(tmp_path, "--grid", "seed=0", "--epochs=2", "--sleep_s=0", check_rc=0)
    run_sweep(tmp_path, "--grid", "seed=0", "--sleep_s=0", "--epochs=2", check_rc=0)
    done = run_sweep(tmp_path, "--grid", "seed=0", "--epochs=3", check_rc=2)
    assert done.stderr.count("\n") == 1 and "another --sweep_dir" in done.stderr


def test_dry_run_lists_commands_and_runs_nothing(tmp_path):
    done = run_sweep(tmp_path / "s", "--grid", "seed=0,1", "--dry_run", check_rc=0)
    assert done.stdout.count("python -m tests.fake_experiment --workdir=") == 2
    assert not (tmp_path / "s").exists()


def test_failures_are_recorded_and_do_not_stop_the_sweep(tmp_path):
    d = tmp_path / "sweep"
    done = run_sweep(
        d, "--grid", "learning_rate=3,0.01,2", "--fail_above=1", "--parallel=2", check_rc=1
    )
    assert summary(d, "learning_rate=0.01")["best_val_accuracy"] == pytest.approx(0.9)
    for name in ("learning_rate=3", "learning_rate=2"):
        assert not (d / name / "summary.json").exists()
        with open(d / name / "failed.json") as f:
            failure = json.load(f)
        assert failure["error"] == "FloatingPointError: loss is nan at epoch 0, step 7"
        assert failure["returncode"] == 1
        assert "Traceback" in (d / name / "log.txt").read_text()
    table = (d / "results.md").read_text()
    assert table.count("failed: FloatingPointError: loss is nan") == 2
    assert "| 1 | 0.01 |" in table
    # A re-run retries the failed runs only.
    done = run_sweep(d, "--grid", "learning_rate=3,0.01,2", "--fail_above=1", check_rc=1)
    assert done.stdout.count("FAILED") == 2 and "finished before, skipped" in done.stdout


def test_inprocess_mode_shares_the_process_and_isolates_failures(tmp_path):
    d = tmp_path / "sweep"
    done = run_sweep(
        d, "--mode=inprocess", "--grid", "learning_rate=0.01,3,0.1", "--fail_above=1", check_rc=1
    )
    first, second = summary(d, "learning_rate=0.01"), summary(d, "learning_rate=0.1")
    assert first["pid"] == second["pid"] and second["calls_in_process"] == 3
    with open(d / "learning_rate=3" / "failed.json") as f:
        assert json.load(f)["error"] == "FloatingPointError: loss is nan at epoch 0, step 7"
    assert "| 1 | 0.01 |" in done.stdout
    with open(d / "learning_rate=0.1" / "config.json") as f:
        config = json.load(f)
    # Flags parsed afresh for every run: the typed value of this run, defaults for the rest.
    assert config["learning_rate"] == 0.1 and config["seed"] == 0 and config["fail_above"] == 1.0


def test_every_experiment_takes_the_workdir_where_the_inprocess_mode_passes_it():
    """--mode=inprocess calls run(config, workdir): each experiment's run takes the workdir
    second, before verbose (read from the source, so no experiment's flags enter here)."""
    found = 0
    for path in sorted((ROOT / "experiments").glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name == "run":
                found += 1
                assert [a.arg for a in node.args.args[1:3]] == ["workdir", "verbose"], path.name
    assert found >= 9


def test_gpus_mode_gives_each_run_one_gpu(tmp_path):
    d = tmp_path / "sweep"
    run_sweep(d, "--gpus=3,5", "--grid", "seed=0,1,2,3", check_rc=0)
    seen = {summary(d, f"seed={s}")["cuda_visible_devices"] for s in range(4)}
    assert seen == {"3", "5"}


def _start_and_stop_mid_run(sweep_dir, args, sig):
    """Starts a sweep, lets run 1 finish and run 2 get partway, then sends `sig` to the sweep."""
    process = start_module("launch.sweep", FAKE, f"--sweep_dir={sweep_dir}", *args)
    checkpoint = sweep_dir / "seed=1" / "checkpoint"
    deadline = time.monotonic() + 60
    while not (checkpoint.exists() and checkpoint.read_text() in ("1", "2")):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.02)
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    assert (sweep_dir / "seed=0" / "summary.json").exists()
    assert not (sweep_dir / "seed=1" / "summary.json").exists()
    return process.returncode, err


def _check_resumed(sweep_dir, args, saved=None):
    """Runs the sweep again; `saved` (a file) is made once the re-run waits for the run
    that an earlier sweep left behind, still 'saving' until that file exists."""
    rerun = start_module("launch.sweep", FAKE, f"--sweep_dir={sweep_dir}", *args)
    if saved is not None:
        deadline = time.monotonic() + 60
        while "waiting for the process an earlier sweep left behind" not in rerun.output()[0]:
            assert time.monotonic() < deadline and rerun.poll() is None, rerun.output()
            time.sleep(0.01)
        saved.touch()
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, out + err
    done = subprocess.CompletedProcess(rerun.args, rerun.returncode, out, err)
    assert "[1/3] seed=0  finished before, skipped" in done.stdout
    assert summary(sweep_dir, "seed=0")["attempts"] == 1
    resumed = summary(sweep_dir, "seed=1")
    assert resumed["attempts"] == 2 and resumed["resumed_from_epoch"] >= 1
    assert summary(sweep_dir, "seed=2")["attempts"] == 1
    assert "unfinished" not in (sweep_dir / "results.md").read_text()
    assert not list(sweep_dir.glob("*/failed.json"))
    return done


@pytest.mark.parametrize("mode", ["subprocess", "inprocess"])
def test_sigkill_then_rerun_resumes_without_redoing_finished_runs(tmp_path, mode):
    d, saved = tmp_path / "sweep", tmp_path / "saved"
    # A run whose sweep is killed gets SIGTERM and 'saves' until the file `saved` exists;
    # the re-run, started at once, must wait for it instead of training in the same workdir
    # beside it. (In one process the run dies with the sweep: nothing is left to wait for.)
    args = [f"--mode={mode}", "--grid", "seed=0,1,2", "--epochs=4", "--sleep_s=0.15"]
    args += [f"--stop_until={saved}"]
    code, _ = _start_and_stop_mid_run(d, args, signal.SIGKILL)
    assert code == -signal.SIGKILL
    leftover = (d / "seed=1" / "pid").read_text()  # the run the killed sweep left saving
    done = _check_resumed(d, args, saved if mode == "subprocess" else None)
    if mode == "subprocess":
        assert (
            f"[2/3] seed=1  waiting for the process an earlier sweep left behind (pid {leftover})"
            " to stop; kill it to stop waiting"
        ) in done.stdout


@pytest.mark.parametrize("mode", ["subprocess", "inprocess"])
def test_sigterm_stops_the_sweep_without_recording_failures(tmp_path, mode):
    d = tmp_path / "sweep"
    args = [f"--mode={mode}", "--grid", "seed=0,1,2", "--epochs=4", "--sleep_s=0.15"]
    code, err = _start_and_stop_mid_run(d, args, signal.SIGTERM)
    assert code == 130 and "run the same command again to resume" in err
    assert not (d / "seed=1" / "failed.json").exists()
    _check_resumed(d, args)


def test_a_second_sweep_on_the_same_dir_is_refused(tmp_path):
    with open(tmp_path / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write("12345")
        lock.flush()
        done = run_sweep(tmp_path, "--grid", "seed=0", check_rc=2)
    assert "another sweep (pid 12345) is running" in done.stderr
    assert done.stderr.strip().endswith("wait for it, or use another --sweep_dir")


def test_a_run_stopped_by_a_signal_stops_the_sweep_and_is_not_failed(tmp_path):
    d = tmp_path / "sweep"
    # the run saves and stops after its first epoch, as on SIGTERM, and exits with STOPPED
    done = run_sweep(d, "--grid", "seed=0,1", "--stop_after=1", check_rc=130)
    assert "[1/2] seed=0  stopped after" in done.stdout and "FAILED" not in done.stdout
    assert "run the same command again to resume" in done.stderr
    assert not (d / "seed=0" / "failed.json").exists() and not (d / "seed=1").exists()
    assert results.run_status(str(d / "seed=0")) == results.UNFINISHED


def test_the_error_of_a_run_that_dies_silently_is_not_the_log_header(tmp_path):
    runner = sweep.Sweep(str(tmp_path), FAKE, 1)
    job = sweep.Job("seed=0", str(tmp_path / "seed=0"), ["--seed=0"], 1)
    for _ in range(2):  # a fresh log, then one that holds an earlier attempt
        runner._begin(job)
        log = os.path.join(job.workdir, results.LOG)
        assert job.log_offset == os.path.getsize(log)
        assert sweep._last_line(log, job.log_offset) == ""


# ---------------------------------------------------------------- results and ranking


def _fake_sweep_dir(tmp_path, rows):
    """A sweep directory as a sweep leaves it; rows: (flags, summary or None, error or None)."""
    record = {"module": FAKE, "fixed_flags": [], "runs": {}}
    for flags, run_summary, error in rows:
        name = sweep.run_name(flags)
        record["runs"][name] = flags
        os.makedirs(tmp_path / name)
        if run_summary is not None:
            (tmp_path / name / "summary.json").write_text(json.dumps(run_summary))
        if error is not None:
            (tmp_path / name / "failed.json").write_text(json.dumps({"error": error}))
    (tmp_path / "sweep.json").write_text(json.dumps(record))
    return tmp_path


def test_validation_decides_the_ranking_never_test(tmp_path):
    d = _fake_sweep_dir(
        tmp_path,
        [
            ({"lr": "0.1", "seed": "0"}, {"best_val_accuracy": 0.90, "test_accuracy": 0.99}, None),
            ({"lr": "0.3", "seed": "0"}, {"best_val_accuracy": 0.95, "test_accuracy": 0.80}, None),
            ({"lr": "1", "seed": "0"}, None, "FloatingPointError: loss is nan"),
            ({"lr": "0.01", "seed": "0"}, None, None),
            ({"lr": "0.03", "seed": "0"}, {"best_val_accuracy": 0.93, "test_accuracy": 0.70}, None),
            ({"lr": "0.1", "seed": "1"}, {"best_val_accuracy": 0.92, "test_accuracy": 0.99}, None),
        ],
    )
    runs, flag_names = results.load(str(d))
    assert flag_names == ["lr", "seed"]
    ranked = results.rank(runs)
    assert [r.name for r in ranked[:4]] == [
        "lr=0.3,seed=0",
        "lr=0.03,seed=0",
        "lr=0.1,seed=1",
        "lr=0.1,seed=0",
    ]
    assert [r.status for r in ranked[4:]] == ["failed", "unfinished"]
    with pytest.raises(results.UsageError, match="test"):
        results.rank(runs, metric="test_accuracy")

    text = results.report(str(d))
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[1] == "| 1 | 0.3 | 0 | 0.9500 | 0.8000 | - | finished |"
    assert rows[5] == "| - | 1 | 0 | - | - | - | failed: FloatingPointError: loss is nan |"
    assert rows[6].endswith("| unfinished |")
    # Averaged over seeds, lr=0.1 (val 0.91 on average) still ranks below lr=0.3.
    averaged = text.split("Averaged over seed:")[1]
    assert averaged.index("| 0.3 |") < averaged.index("| 0.03 |") < averaged.index("| 0.1 |")
    assert "| 0.1 | 0.9100 ± 0.0141 | 0.9900 ± 0.0000 | 2 / 2 |" in averaged
    csv_lines = (d / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("rank,run,status,lr,seed,best_val_accuracy,test_accuracy")
    assert csv_lines[1].startswith('1,"lr=0.3,seed=0",finished,0.3,0,0.95,0.8')


def test_results_command(tmp_path, capsys):
    d = _fake_sweep_dir(
        tmp_path, [({"seed": "0"}, {"best_val_accuracy": 0.9, "test_accuracy": 0.8}, None)]
    )
    assert results.main([str(d), "--no_plots"]) == 0
    assert "| 1 | 0 | 0.9000 | 0.8000 |" in capsys.readouterr().out
    assert results.main([str(d), "--metric=test_accuracy"]) == 2
    assert results.main([str(tmp_path / "nowhere")]) == 2
    assert results.main([str(d), "--metric=best_val_acuracy", "--no_plots"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(line.startswith("results: error: ") for line in err)
    assert err[2] == (
        "results: error: --metric=best_val_acuracy: no finished run's summary has it; "
        "choose one of best_val_accuracy"
    )


def test_a_cloud_storage_sweep_dir_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert sweep.main([FAKE, "--sweep_dir=gs://bucket/sweep", "--grid", "seed=1"]) == 2
    assert "cloud storage paths are not supported" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []
