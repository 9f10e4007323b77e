"""Run many experiments in parallel worker processes, each writing its record as it finishes, under a deadline.

A *task* is a short string; a *lane* is a list of tasks that one worker runs in order (a lane starts with the model
its defenses need, so no two workers ever train the same model):

* ``model:ATTACK[:k=v,...]``            train (or load) the model, write its no-defense record (``poison_rate=r``,
  ``train_epochs=n``, or an attack parameter)
* ``defense:ATTACK:DEFENSE[:k=v,...]``  :func:`ngf_lib.experiments.defended_record` (``val_size=0.05`` and the
  like go after the last colon)
* ``curv:ATTACK:DEFENSE[:density]``      :func:`ngf_lib.curvature.curvature_record` (``DEFENSE`` may be ``none``)
* ``plan:ATTACK:PLAN``                    every defense of a named plan (:data:`ngf_lib.experiments.PLANS`)
* ``traj:ATTACK[:every=k]``               :func:`ngf_lib.curvature.trajectory_record` (λmax along training)

``ATTACK`` may carry a seed, ``badnets@1`` (default: the run's ``--seed``). Every task is computed only if its record
is missing, so a lane that is stopped (deadline, crash, Ctrl-C) resumes
where it stopped. A task that fails is logged with its traceback and the lane goes on. Workers start no new task
after ``deadline`` seconds and are terminated at ``hard_deadline``: what they finished is in the store.

Used for the lent GPU sessions (several lanes share one GPU: a single PreActResNet18 training does not keep an H100
busy), and on CPU with ``--workers 1``. Command line::

    python -m ngf_lib.runner --profile gpu --lanes "model:badnets defense:badnets:ngf" "model:blend" --deadline 400
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import traceback


def _value(s: str):
    for cast in (int, float):
        try:
            return cast(s)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(s.lower(), s)


def parse_task(task: str) -> tuple[str, str, str, dict]:
    """``(kind, attack, defense, options)`` of a task string; a clear error for a malformed one."""
    parts = task.split(":")
    kind = parts[0]
    if kind == "model" and len(parts) == 2:
        return kind, parts[1], "none", {}
    if kind == "model" and len(parts) == 3:           # model:ATTACK:poison_rate=0.25
        parts = [kind, parts[1], "none", parts[2]]
    if kind == "plan" and len(parts) == 3:
        return kind, parts[1], parts[2], {}
    if kind == "traj" and len(parts) in (2, 3):
        parts = [kind, parts[1], "none"] + parts[2:]
    if kind in ("model", "defense", "curv", "traj") and len(parts) in (3, 4):
        opts = {}
        if len(parts) == 4 and parts[3]:
            for item in parts[3].split(","):
                if item == "density":
                    opts["with_density"] = True
                elif "=" in item:
                    k, v = item.split("=", 1)
                    opts[k] = _value(v)
                else:
                    raise ValueError(f"task {task!r}: option {item!r} is neither 'density' nor key=value")
        return kind, parts[1], parts[2], opts
    raise ValueError(f"malformed task {task!r}; use model:ATTACK, defense:ATTACK:DEFENSE[:k=v,...], "
                     f"curv:ATTACK:DEFENSE[:density], plan:ATTACK:PLAN or traj:ATTACK[:every=k]")


def check_task(task: str) -> None:
    """Raise a clear error for a task naming an unknown attack, defense or plan (before any worker starts)."""
    from . import attacks, defenses, experiments
    kind, attack, defense, _ = parse_task(task)
    attack, _ = split_seed(attack, 0)
    if attack not in attacks.available():
        raise ValueError(f"task {task!r}: unknown attack {attack!r}; available: {', '.join(attacks.available())}")
    if kind == "plan":
        if defense not in experiments.PLANS:
            raise ValueError(f"task {task!r}: unknown plan {defense!r}; available: {', '.join(experiments.PLANS)}")
    elif defense != "none" and defense not in defenses.available():
        raise ValueError(f"task {task!r}: unknown defense {defense!r}; available: {', '.join(defenses.available())}")


def split_seed(attack: str, seed: int) -> tuple[str, int]:
    """``"badnets@1"`` -> ``("badnets", 1)``; ``"badnets"`` -> ``("badnets", seed)``."""
    if "@" not in attack:
        return attack, seed
    name, s = attack.rsplit("@", 1)
    if not s.isdigit():
        raise ValueError(f"bad seed in {attack!r}; write ATTACK@SEED, e.g. badnets@1")
    return name, int(s)


def run_task(task: str, profile: str, dataset: str = "cifar10", seed: int = 0) -> dict:
    """Run one task (computing its record only if missing) and return the record."""
    from . import curvature, experiments, zoo
    kind, attack, defense, opts = parse_task(task)
    attack, seed = split_seed(attack, seed)
    if kind == "model":        # the weights too, not only the record: else the lane's next task would train them
        return zoo.get_model(dataset, attack, profile, seed, progress=False, **opts).record
    if kind == "plan":
        rows = experiments.run_plan(defense, [attack], [seed], dataset, profile, progress=True)
        return {"acc": rows[-1]["acc"], "asr": rows[-1]["asr"]}
    if kind == "traj":
        return curvature.trajectory_record(dataset, attack, profile, seed, progress=False, **opts)
    if kind == "defense":
        return experiments.defended_record(dataset, attack, defense, profile, seed, progress=False, **opts)
    return curvature.curvature_record(dataset, attack, defense, profile, seed, **opts)


def run_lane(lane: list, profile: str, dataset: str = "cifar10", seed: int = 0, deadline: float | None = None,
             threads: int | None = None, name: str = "lane") -> dict:
    """Run the tasks of one lane in order (each computed only if missing) in this process; a failing task is
    printed with its traceback and the lane goes on; no task starts after the time ``deadline`` (epoch seconds).
    Returns ``{"done": [...], "failed": [...], "skipped": [...]}`` (task strings): the job of an engine."""
    import torch
    if threads:
        torch.set_num_threads(threads)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
    out = {"done": [], "failed": [], "skipped": []}
    for task in lane:
        if deadline is not None and time.time() > deadline:
            print(f"[{name}] deadline: skipped {task}", flush=True)
            out["skipped"].append(task)
            continue
        t0 = time.time()
        try:
            rec = run_task(task, profile, dataset, seed)
            asr = rec.get("asr")
            extra = f" lmax {rec['lambda_max']:.1f} tr {rec['trace']:.0f}" if "lambda_max" in rec else ""
            print(f"[{name}] {task:<40} ACC {rec['acc']:5.1f} ASR {asr if asr is None else round(asr, 1)}"
                  f"{extra} ({time.time() - t0:.0f} s)", flush=True)
            out["done"].append(task)
        except Exception:
            print(f"[{name}] FAILED {task} after {time.time() - t0:.0f} s\n{traceback.format_exc()}", flush=True)
            out["failed"].append(task)
    return out


def _lane(i: int, lane: list, profile: str, dataset: str, seed: int, deadline: float, threads: int,
          sharing: int = 1) -> None:
    os.environ["NGF_JOBS_SHARING"] = str(sharing)     # every record this worker writes says how many shared the device
    run_lane(lane, profile, dataset, seed, deadline, threads, name=f"lane {i}")


def group_lanes(lanes: list[list[str]], workers: int | None) -> list[list[str]]:
    """At most ``workers`` lanes: lane k joins lane ``k mod workers`` (their tasks run one after the other)."""
    if not workers or workers >= len(lanes):
        return [list(lane) for lane in lanes]
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    out = [[] for _ in range(workers)]
    for k, lane in enumerate(lanes):
        out[k % workers].extend(lane)
    return out


def run_lanes(lanes: list[list[str]], profile: str, dataset: str = "cifar10", seed: int = 0,
              deadline: float = 1e9, hard_deadline: float | None = None, threads: int | None = None,
              workers: int | None = None) -> None:
    """Run each lane in its own process (tasks checked before anything starts; at most ``workers`` processes, see
    :func:`group_lanes`); return when all have finished or ``hard_deadline`` seconds have passed (the stragglers are
    terminated; ``None``: wait for them)."""
    lanes = group_lanes(lanes, workers)
    for lane in lanes:
        for task in lane:
            check_task(task)
    from .zoo import experiment_data
    experiment_data(dataset, profile)      # decode the dataset once, so the workers read the decoded cache
    t0 = time.time()
    threads = threads or max(1, (os.cpu_count() or 2) // max(1, len(lanes)))
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_lane, args=(i, lane, profile, dataset, seed, t0 + deadline, threads, len(lanes)),
                         daemon=True)          # a worker never outlives its parent's normal exit ...
             for i, lane in enumerate(lanes)]
    # ... nor a `kill` of the parent: SIGTERM's default action skips that clean-up, and the orphaned worker went on
    # with its lane beside the next run's (two trainings on two cores, each many times slower)
    old = signal.signal(signal.SIGTERM, _exit_on_sigterm) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        for p in procs:
            p.start()
        stop = t0 + hard_deadline if hard_deadline is not None else None
        for p in procs:
            p.join(timeout=None if stop is None else max(0.0, stop - time.time()))
    finally:
        for i, p in enumerate(procs):
            if p.is_alive():
                print(f"[lane {i}] {'hard deadline' if sys.exc_info()[0] is None else 'stopped'}: terminated "
                      f"(its finished tasks are in the store)", flush=True)
                p.terminate()
                p.join()
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    print(f"all lanes done in {time.time() - t0:.0f} s", flush=True)


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def read_lanes(path) -> list[list[str]]:
    """The lanes of a plan file: one lane per line, tasks separated by spaces, ``#`` starts a comment."""
    with open(path) as f:
        return [line.split("#")[0].split() for line in f if line.split("#")[0].strip()]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="cpu")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lanes", nargs="+", default=[], help="one quoted, space-separated task list per worker")
    p.add_argument("--lanes-file", default=None, help="a file with one lane per line ('#' starts a comment)")
    p.add_argument("--deadline", type=float, default=1e9, help="seconds after which no task starts")
    p.add_argument("--hard-deadline", type=float, default=None, help="seconds after which workers are terminated")
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker")
    p.add_argument("--workers", type=int, default=None, help="at most this many worker processes")
    a = p.parse_args(argv)
    lanes = [lane.split() for lane in a.lanes]
    if a.lanes_file:
        lanes += read_lanes(a.lanes_file)
    if not lanes:
        p.error("give --lanes or --lanes-file")
    run_lanes(lanes, a.profile, a.dataset, a.seed, a.deadline, a.hard_deadline, a.threads, a.workers)


if __name__ == "__main__":
    main()
