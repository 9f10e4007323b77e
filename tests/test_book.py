"""The book: every chapter executes in the smoke profile, the site builds with -W, and no committed chapter holds
an error."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ngf_lib import chapters

ROOT = Path(__file__).resolve().parents[1]


def test_committed_chapters_hold_no_errors():
    nbs = sorted((ROOT / "book").rglob("*.ipynb"))
    nbs = [p for p in nbs if "_build" not in p.parts and ".tmp" not in p.parts]
    assert nbs, "book/ has no executed chapters"
    for nb in nbs:
        assert chapters.notebook_errors(nb) == [], nb


def test_committed_chapters_show_whole_tables():
    """pandas cuts a table longer than display.max_rows down to ten rows and a "..." row: a reader of the site would
    see ten of the reproduction report's numbers. No committed table may be cut."""
    import json
    import re
    for nb in sorted((ROOT / "book" / "chapters").glob("*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            for out in cell.get("outputs", []):
                html = "".join(out.get("data", {}).get("text/html", []))
                if re.search(r"<p>\d+ rows × \d+ columns</p>", html):
                    assert "<th>...</th>" not in html, f"{nb.name}: a table is shown cut (raise display.max_rows)"


def test_every_source_has_a_parameters_cell_and_an_executed_chapter():
    import json
    srcs = chapters.chapter_sources(ROOT / "notebooks")
    assert srcs
    for src in srcs:
        nb = json.loads(src.read_text())
        tags = [t for c in nb["cells"] for t in c.get("metadata", {}).get("tags", [])]
        assert "parameters" in tags, src
        assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), f"{src} has outputs"
        assert (ROOT / "book" / "chapters" / src.name).is_file(), f"{src.name} not executed into book/chapters"


@pytest.mark.slow
def test_smoke_chapters_execute_and_site_builds(tmp_path):
    book = tmp_path / "book"
    shutil.copytree(ROOT / "book", book, ignore=shutil.ignore_patterns("_build", ".tmp"))
    shutil.copy(ROOT / "_config.yml", tmp_path / "_config.yml")
    rc = chapters.main(["--profile", "smoke", "--out", str(book / "chapters"), "--notebooks", str(ROOT / "notebooks")])
    assert rc == 0
    for src in chapters.chapter_sources(ROOT / "notebooks"):
        out = book / "chapters" / src.name
        assert chapters.notebook_errors(out) == []
        assert "profile `smoke`" in out.read_text()
    jb = Path(sys.executable).with_name("jupyter-book")
    proc = subprocess.run([str(jb), "build", str(book), "-W", "-n", "--keep-going"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "_build" / "html" / "chapters" / "01_backdoored_models.html").is_file()
    # the site in a real headless browser: pages, images, internal links, Colab buttons; a screenshot is kept
    from ngf_lib import sitecheck
    art = ROOT / "test-artifacts"
    art.mkdir(exist_ok=True)
    out = sitecheck.check_site(tmp_path / "_build" / "html", repo_url="https://github.com/ngf-book/ngf-book",
                               screenshot=art / "site-chapter.png",
                               screenshot_page="chapters/01_backdoored_models.html")
    chapters_built = [p for p in out["pages"] if p.startswith("/chapters/")]
    assert len(chapters_built) == len(chapters.chapter_sources(ROOT / "notebooks")), out["pages"].keys()
    assert out["problems"] == []
    assert sum(i["n_images"] for i in out["pages"].values()) > 0


def test_failed_chapter_never_replaces_a_good_one(tmp_path):
    import nbformat
    src_dir, out = tmp_path / "src", tmp_path / "out"
    src_dir.mkdir()
    out.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("profile = 'x'"),
                                         nbformat.v4.new_code_cell("raise RuntimeError('boom')")])
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, src_dir / "01_bad.ipynb")
    (out / "01_bad.ipynb").write_text("GOOD")
    rc = chapters.main(["--profile", "smoke", "--out", str(out), "--notebooks", str(src_dir)])
    assert rc == 1
    assert (out / "01_bad.ipynb").read_text() == "GOOD"
    assert (out / ".tmp" / "01_bad.ipynb").is_file()


def test_chapter_parameters_can_be_overridden_from_the_command_line(tmp_path):
    import nbformat
    src_dir, out = tmp_path / "src", tmp_path / "out"
    src_dir.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("profile = 'x'\nseeds = [0]"),
                                         nbformat.v4.new_code_cell("assert seeds == [0, 1], seeds")])
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, src_dir / "01_p.ipynb")
    args = ["--profile", "smoke", "--out", str(out), "--notebooks", str(src_dir)]
    assert chapters.main(args) == 1                                   # the default fails the assertion
    assert chapters.main(args + ["--param", "seeds=[0, 1]"]) == 0
    with pytest.raises(SystemExit):
        chapters.main(args + ["--param", "seeds"])
