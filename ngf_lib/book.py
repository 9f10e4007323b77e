"""One command regenerates the book for a profile: compute what the results store lacks, then execute the chapters.

    python -m ngf_lib.book --profile cpu                      # here: one worker process, then every chapter
    python -m ngf_lib.book --profile gpu --workers 4          # one GPU shared by 4 workers
    python -m ngf_lib.book --profile paper --engine submitit  # a SLURM cluster: one job per lane

1. The profile's plan, ``plans/<profile>.txt`` (lanes of tasks, :mod:`ngf_lib.runner`; ``plans/<profile>-gtsrb.txt``
   and the like for the other datasets), lists the experiments the chapters need. Each task computes its record only if the store lacks it, so a second run, or a run after an
   interruption, reuses everything already finished.
2. The lanes run on an *engine*: ``local`` (worker processes on this machine) or ``submitit`` (one job per lane:
   SLURM where ``sbatch`` exists, local processes otherwise, or ``--cluster local`` to force them). The paper profile's
   hundreds of GPU-hours fan out this way; every job writes its own records into the shared results folder.
3. The chapters are executed with the profile (:mod:`ngf_lib.chapters`): they read the records and compute anything
   the plan missed.
4. A summary says how many records were computed and how many reused, by kind, and which tasks failed.
"""
from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

from . import chapters, paths, runner


def plan_path(profile: str) -> Path:
    root = paths.repo_root() or Path.cwd()
    return root / "plans" / f"{profile}.txt"


def dataset_plans(profile: str) -> list[tuple[Path, str]]:
    """``plans/<profile>.txt`` (CIFAR-10) and ``plans/<profile>-<dataset>.txt`` for the other datasets."""
    from .data import DATASETS
    main = plan_path(profile)
    others = sorted(main.parent.glob(f"{profile}-*.txt")) if main.parent.is_dir() else []
    return [(main, "cifar10")] + [(p, p.stem[len(profile) + 1:]) for p in others
                                  if p.stem[len(profile) + 1:] in DATASETS and p.stem[len(profile) + 1:] != "cifar10"]


def record_files(profile: str) -> set[Path]:
    folder = paths.results_dir() / profile
    return set(folder.rglob("*.json")) if folder.is_dir() else set()


def _kind(path: Path, profile: str) -> str:
    rel = path.relative_to(paths.results_dir() / profile).parts
    return rel[1] if len(rel) > 2 else "result"


def run_engine(lanes, profile: str, engine: str = "local", workers: int | None = None, cluster: str | None = None,
               log_dir: str | None = None, dataset: str = "cifar10") -> dict:
    """Run ``lanes`` on ``engine``; returns ``{"done", "failed", "skipped"}`` task lists (local: only failures
    are known from the workers' output, so ``failed`` is empty and the record count tells what was computed)."""
    for lane in lanes:
        for task in lane:
            runner.check_task(task)
    lanes = runner.group_lanes(lanes, workers)
    if engine == "local":
        runner.run_lanes(lanes, profile, dataset)
        return {"done": [], "failed": [], "skipped": []}
    if engine == "submitit":
        import submitit
        folder = Path(log_dir or (paths.cache_dir() / "submitit" / profile))
        ex = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        ex.update_parameters(timeout_min=24 * 60)
        jobs = [ex.submit(runner.run_lane, lane, profile, dataset, 0, None, None, f"job {i}")
                for i, lane in enumerate(lanes)]
        out = {"done": [], "failed": [], "skipped": []}
        for i, job in enumerate(jobs):
            try:
                res = job.result()
            except Exception as e:                              # the job itself died: all its tasks count as failed
                print(f"[job {i}] died: {type(e).__name__}: {str(e)[-500:]}", flush=True)
                res = {"done": [], "failed": list(lanes[i]), "skipped": []}
            for k in out:
                out[k] += res[k]
        return out
    raise ValueError(f"unknown engine {engine!r}; use local or submitit")


def regenerate(profile: str, *, engine: str = "local", workers: int | None = None, cluster: str | None = None,
               plan=None, only=None, skip_chapters: bool = False, log_dir: str | None = None, out=None) -> dict:
    """Compute the plan's missing records on ``engine``, execute the chapters (into ``out``, default
    ``book/chapters``), return (and print) a summary. ``workers`` defaults to 1 for the CPU profiles (two cores
    hold one torch job well) and to one per lane otherwise."""
    t0 = time.time()
    if workers is None and profile in ("smoke", "cpu"):
        workers = 1
    plans = [(Path(plan), "cifar10")] if plan is not None else dataset_plans(profile)
    if not plans or not plans[0][0].is_file():
        raise FileNotFoundError(f"no plan for profile {profile!r}: {plans[0][0] if plans else plan_path(profile)} "
                                f"does not exist")
    jobs = [(runner.read_lanes(p), ds, p) for p, ds in plans]
    lanes = [lane for ls, _, _ in jobs for lane in ls]
    for lane in lanes:                                   # every plan checked before anything runs
        for task in lane:
            runner.check_task(task)
    before = record_files(profile)
    res = {"done": [], "failed": [], "skipped": []}
    for ls, ds, p in jobs:
        print(f"[book] profile {profile}, {ds}: {sum(map(len, ls))} tasks in {len(ls)} lanes ({p}), "
              f"{len(before)} records in the store, engine {engine}", flush=True)
        r = run_engine(ls, profile, engine, workers, cluster, log_dir, dataset=ds)
        for k in res:
            res[k] += r[k]
    after = record_files(profile)
    new = after - before
    rc = 0
    if not skip_chapters:
        args = ["--profile", profile] + (["--only", *only] if only else []) + (["--out", str(out)] if out else [])
        rc = chapters.main(args)
    summary = {"profile": profile, "engine": engine, "tasks": sum(map(len, lanes)),
               "computed": dict(Counter(_kind(p, profile) for p in new)),
               "reused": dict(Counter(_kind(p, profile) for p in before & after)),
               "failed": res["failed"], "chapters_rc": rc, "wall_time_s": time.time() - t0}
    print(f"[book] computed {len(new)} records {summary['computed'] or ''}, reused {len(before & after)} "
          f"{summary['reused'] or ''}; failed tasks: {len(res['failed'])}"
          + (" (" + ", ".join(res["failed"]) + ")" if res["failed"] else "")
          + ("" if skip_chapters else f"; chapters {'executed' if rc == 0 else 'FAILED'}")
          + f"; {summary['wall_time_s']:.0f} s", flush=True)
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="cpu", help="smoke, cpu, gpu or paper")
    p.add_argument("--engine", default="local", choices=["local", "submitit"])
    p.add_argument("--workers", type=int, default=None, help="at most this many parallel workers / jobs")
    p.add_argument("--cluster", default=None, help="submitit: 'slurm', 'local' or 'debug' (default: auto)")
    p.add_argument("--plan", default=None, help="a lanes file (default: plans/<profile>.txt)")
    p.add_argument("--only", nargs="*", default=None, help="execute only these chapters")
    p.add_argument("--skip-chapters", action="store_true", help="compute the records only")
    a = p.parse_args(argv)
    s = regenerate(a.profile, engine=a.engine, workers=a.workers, cluster=a.cluster, plan=a.plan, only=a.only,
                   skip_chapters=a.skip_chapters)
    return 1 if (s["failed"] or s["chapters_rc"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
