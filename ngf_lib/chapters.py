"""Execute the chapter notebooks with papermill, for one profile, into the book.

Every chapter source in ``notebooks/`` is executed with ``profile=<name>`` into a temporary file; only a run that
finishes without error replaces the chapter in ``book/chapters/`` (a failed run never replaces a good chapter: the
failed notebook is kept in ``book/chapters/.tmp/`` for inspection). Chapters compute only what the results store
lacks, so a second run reuses every finished experiment.

    python -m ngf_lib.chapters --profile cpu              # all chapters
    python -m ngf_lib.chapters --profile smoke --out /tmp/book/chapters --only 01_backdoored_models
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from . import paths

VOLATILE_CELL_KEYS = ("papermill", "execution")


def chapter_sources(notebooks_dir=None) -> list[Path]:
    root = paths.repo_root()
    nb_dir = Path(notebooks_dir) if notebooks_dir else (root / "notebooks" if root else Path("notebooks"))
    return sorted(p for p in nb_dir.glob("[0-9]*.ipynb"))


def strip_volatile(nb_path: Path) -> None:
    """Drop papermill's timing metadata (it changes every run and hides real diffs); keep outputs; collapse the
    injected-parameters cell on the site."""
    nb = json.loads(nb_path.read_text())
    nb.get("metadata", {}).pop("papermill", None)
    for cell in nb.get("cells", []):
        for k in VOLATILE_CELL_KEYS:
            cell.get("metadata", {}).pop(k, None)
        tags = cell.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags and "hide-cell" not in tags:
            tags.append("hide-cell")          # collapsed on the site; the run line at the end names the profile
    nb_path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def notebook_errors(nb_path: Path) -> list[str]:
    """Error outputs or a papermill exception recorded in an executed notebook (empty list: clean)."""
    nb = json.loads(Path(nb_path).read_text())
    errs = []
    if nb.get("metadata", {}).get("papermill", {}).get("exception"):
        errs.append(f"{nb_path}: papermill recorded an exception")
    for i, cell in enumerate(nb.get("cells", [])):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                errs.append(f"{nb_path}: cell {i}: {out.get('ename')}: {out.get('evalue')}")
    return errs


def execute(src: Path, out_dir: Path, profile: str, extra_params: dict | None = None, timeout=None) -> Path:
    """Execute one chapter; on success move it to ``out_dir/<name>.ipynb``; on failure raise, keeping the old one."""
    import papermill as pm
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir = out_dir / ".tmp"
    tmp_dir.mkdir(exist_ok=True)
    tmp = tmp_dir / src.name
    params = {"profile": profile, **(extra_params or {})}
    pm.execute_notebook(str(src), str(tmp), parameters=params, kernel_name="python3", cwd=str(src.parent),
                        progress_bar=False, execution_timeout=timeout)
    errs = notebook_errors(tmp)
    if errs:
        raise RuntimeError("; ".join(errs))
    strip_volatile(tmp)
    dst = out_dir / src.name
    os.replace(tmp, dst)
    return dst


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Execute the book's chapters with papermill for one profile.")
    p.add_argument("--profile", default="cpu", help="smoke, cpu, gpu or paper")
    p.add_argument("--only", nargs="*", default=None, help="chapter names (without .ipynb) to run")
    p.add_argument("--out", default=None, help="output folder (default: book/chapters)")
    p.add_argument("--notebooks", default=None, help="folder of chapter sources (default: notebooks/)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=JSON",
                   help="override a parameter of the chapters, e.g. --param 'seeds=[0, 1]' (repeatable)")
    a = p.parse_args(argv)
    extra = {}
    for item in a.param:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            p.error(f"--param wants NAME=JSON, got {item!r}")
        try:
            extra[name] = json.loads(value)
        except json.JSONDecodeError:
            p.error(f"--param {name}: {value!r} is not JSON (strings need quotes: {name}='\"text\"')")
    from .profiles import get_profile
    get_profile(a.profile)  # a clear error for an unknown profile, before any work
    root = paths.repo_root() or Path.cwd()
    out = Path(a.out) if a.out else root / "book" / "chapters"
    srcs = chapter_sources(a.notebooks)
    if a.only:
        srcs = [s for s in srcs if s.stem in a.only]
        if not srcs:
            print(f"no chapter matches {a.only}", file=sys.stderr)
            return 2
    failed = []
    for src in srcs:
        t0 = time.time()
        print(f"[{a.profile}] {src.name} ...", flush=True)
        try:
            dst = execute(src, out, a.profile, extra)
            print(f"[{a.profile}] {src.name} done in {time.time() - t0:.0f} s -> {dst}", flush=True)
        except Exception as e:  # keep going: other chapters may still succeed
            failed.append(src.name)
            print(f"[{a.profile}] {src.name} FAILED after {time.time() - t0:.0f} s: {type(e).__name__}: "
                  f"{str(e)[:2000]}\n  the previous chapter in {out} is kept; the failed run is in {out / '.tmp'}",
                  file=sys.stderr, flush=True)
    if not failed:
        shutil.rmtree(out / ".tmp", ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
