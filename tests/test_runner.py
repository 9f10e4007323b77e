"""The lanes runner (ngf_lib.runner): task strings, early errors, and a real lane that writes its records."""
import pytest

from ngf_lib import experiments, paths, results, runner, zoo


def test_task_strings_parse_to_kind_attack_defense_and_options():
    assert runner.parse_task("model:badnets") == ("model", "badnets", "none", {})
    assert runner.parse_task("defense:blend:i-bau:val_size=0.05") == ("defense", "blend", "i-bau", {"val_size": 0.05})
    assert runner.parse_task("defense:blend:ngf-release:backbone=frozen,steps=20") == (
        "defense", "blend", "ngf-release", {"backbone": "frozen", "steps": 20})
    assert runner.parse_task("curv:troj-one:ngf:density,epochs=10") == (
        "curv", "troj-one", "ngf", {"with_density": True, "epochs": 10})
    assert runner.parse_task("plan:badnets:table3") == ("plan", "badnets", "table3", {})
    assert runner.parse_task("traj:none:every=3") == ("traj", "none", "none", {"every": 3})
    assert runner.parse_task("traj:blend") == ("traj", "blend", "none", {})
    assert runner.parse_task("model:blend@1:poison_rate=0.25") == ("model", "blend@1", "none", {"poison_rate": 0.25})
    assert runner.split_seed("blend@1", 0) == ("blend", 1) and runner.split_seed("blend", 3) == ("blend", 3)


@pytest.mark.parametrize("task, message", [
    ("train:badnets", "malformed task"), ("defense:badnets", "malformed task"),
    ("curv:badnets:ngf:dens", "neither 'density' nor key=value"), ("model:badnet", "unknown attack 'badnet'"),
    ("defense:badnets:ngff", "unknown defense 'ngff'"), ("plan:badnets:table9", "unknown plan 'table9'"),
])
def test_bad_tasks_are_refused_before_any_worker_starts(task, message):
    with pytest.raises(ValueError, match=message):
        runner.run_lanes([["model:none"], [task]], "smoke")


def test_a_lane_writes_its_records_and_a_failing_task_does_not_stop_it(capfd):
    runner.run_lanes([["model:badnets", "defense:badnets:cls-sgd:bogus=1", "defense:badnets:cls-sgd:epochs=3"]],
                     "smoke", threads=2)
    out = capfd.readouterr().out                                     # the workers write to the process stdout
    assert "FAILED defense:badnets:cls-sgd:bogus=1" in out and "unknown defense parameter(s) bogus" in out
    assert zoo.get_record("cifar10", "badnets", "smoke", 0, compute=False) is not None
    rec = experiments.defended_record("cifar10", "badnets", "cls-sgd", "smoke", 0, compute=False, epochs=3)
    assert rec is not None and rec["defense"] == "cls-sgd"
    assert len(results.load_records("smoke")) == 2
    assert {r["jobs_sharing"] for r in results.load_records("smoke")} == {1}   # one lane: alone on the device
    # a model task whose record exists but whose weights are not cached (a fresh machine) trains them itself
    weights = sorted(paths.model_dir().glob("*.safetensors"))
    assert weights
    for w in weights:
        w.unlink()
    runner.run_task("model:badnets", "smoke")
    assert sorted(paths.model_dir().glob("*.safetensors")) == weights


def test_compute_false_reads_only():
    assert zoo.get_record("cifar10", "blend", "smoke", 0, compute=False) is None
    assert experiments.defended_record("cifar10", "blend", "ngf", "smoke", 0, compute=False) is None
    assert experiments.run_plan("table3", ["blend"], [0], "cifar10", "smoke", progress=False, compute=False) == []


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (Linux /proc)."""
    from pathlib import Path
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    from pathlib import Path
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="reads /proc")
def test_killing_the_runner_stops_its_workers():
    """`kill` of the runner (SIGTERM) terminates the worker it started: an orphaned worker went on with its lane
    beside the next run's, both many times slower on a small machine."""
    import os
    import signal
    import subprocess
    import sys
    import time
    proc = subprocess.Popen([sys.executable, "-m", "ngf_lib.runner", "--profile", "smoke", "--workers", "1",
                             "--threads", "1", "--lanes", "model:badnets defense:badnets:ft"],
                            env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers, t0 = [], time.time()
    while not workers and proc.poll() is None and time.time() - t0 < 600:   # a bare cache decodes the data first
        time.sleep(0.1)
        workers = [p for p in _children(proc.pid) if "spawn_main" in open(f"/proc/{p}/cmdline").read()]
    assert workers, "the runner started no worker"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    t1 = time.time()
    while any(_alive(w) for w in workers) and time.time() - t1 < 15:
        time.sleep(0.1)
    left = [w for w in workers if _alive(w)]
    for w in left:
        os.kill(w, signal.SIGKILL)
    assert not left, "a worker outlived the runner"
