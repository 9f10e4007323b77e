"""Check the built site in a real headless browser: every page loads, every image loads, no internal link is broken,
and each chapter's Colab button opens that chapter's notebook in ``book/``.

Chromium (Debian's ``chromium`` package; no driver needed) loads a small harness page from a local HTTP server that
serves the site. The harness opens every page in an iframe (same origin, so it can look inside), waits for its
images, and writes what it found into its own DOM, which ``chromium --dump-dom`` returns. Links are then resolved
against the files of the site. A screenshot of one chapter is taken with ``chromium --screenshot``.

Command line (after ``make book``)::

    python -m ngf_lib.sitecheck _build/html --screenshot _build/chapter.png
"""
from __future__ import annotations

import argparse
import functools
import html
import http.server
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from urllib.parse import unquote, urlparse

HARNESS = "/__sitecheck__.html"
_SCRIPT = """<!doctype html><html><body><pre id="out">running</pre><script>
const pages = %s;
function check(p) {
  return new Promise(resolve => {
    const f = document.createElement('iframe');
    const timer = setTimeout(() => resolve({error: 'timeout'}), 20000);
    f.onload = async () => {
      try {
        const d = f.contentDocument;
        const imgs = Array.from(d.images);
        await Promise.all(imgs.map(i => i.complete ? null : new Promise(r => { i.onload = r; i.onerror = r; })));
        const redirect = !!d.querySelector('meta[http-equiv="refresh" i]');
        resolve({title: d.title, redirect: redirect,
                 status_ok: !!d.querySelector('body') && (d.title.length > 0 || redirect),
                 n_images: imgs.length,
                 broken_images: imgs.filter(i => !(i.naturalWidth > 0)).map(i => i.getAttribute('src')),
                 links: Array.from(d.querySelectorAll('a[href]')).map(a => a.href),
                 colab: Array.from(d.querySelectorAll('a[href*="colab.research.google.com"]')).map(a => a.href)});
      } catch (e) { resolve({error: String(e)}); }
      clearTimeout(timer); f.remove();
    };
    f.src = p; document.body.appendChild(f);
  });
}
(async () => {
  const out = {};
  for (const p of pages) out[p] = await check(p);
  document.getElementById('out').textContent = 'RESULT' + JSON.stringify(out) + 'END';
})();
</script></body></html>"""


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise FileNotFoundError("no Chromium found; install Debian's package: apt-get install -y chromium")


class _Server:
    """Serve ``root`` (and the harness page) on a free local port, in a thread."""

    def __init__(self, root: Path, harness: str):
        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                if self.path.split("?")[0] == HARNESS:
                    body = harness.encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    super().do_GET()

            def log_message(self, *args):
                pass
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                     functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _chromium(args: list[str], timeout: float) -> str:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [find_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", "--disable-quic", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", f"--user-data-dir={profile}", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout


def check_site(site: str | os.PathLike, *, repo_url: str | None = None, book_path: str = "book",
               screenshot: str | os.PathLike | None = None, screenshot_page: str | None = None,
               timeout: float = 300) -> dict:
    """Load every HTML page of ``site`` in headless Chromium; return ``{"pages": {...}, "problems": [...]}``.

    Problems: a page that does not load or has no title, an image that does not load, an internal link to a file
    that does not exist, and a chapter (a page built from ``<book_path>/chapters/X.ipynb``) whose Colab button is
    missing or does not point at ``.../blob/<branch>/<book_path>/chapters/X.ipynb`` of ``repo_url`` (when given).
    """
    root = Path(site).resolve()
    if not (root / "index.html").is_file():
        raise FileNotFoundError(f"{root} holds no built site (no index.html); run `make book` first")
    pages = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.html")
                   if not p.relative_to(root).parts[0].startswith("_") and p.name not in ("genindex.html",
                                                                                          "search.html"))
    harness = _SCRIPT % json.dumps(["/" + p for p in pages])
    with _Server(root, harness) as srv:
        dom = _chromium(["--virtual-time-budget=60000", "--run-all-compositor-stages-before-draw", "--dump-dom",
                         srv.url + HARNESS], timeout)
        m = re.search(r'<pre id="out">RESULT(.*?)END</pre>', dom, re.S)
        if not m:
            raise RuntimeError(f"the harness page did not finish; chromium returned: {dom[:500]}")
        found = json.loads(html.unescape(m.group(1)))
        if screenshot is not None:
            page = screenshot_page or next((p for p in pages if p.startswith("chapters/")), pages[0])
            _chromium(["--window-size=1280,1600", "--hide-scrollbars", f"--screenshot={Path(screenshot).resolve()}",
                       f"{srv.url}/{page}"], timeout)
    problems = []
    for page, info in found.items():
        if "error" in info or not info.get("status_ok"):
            problems.append(f"{page}: did not load ({info.get('error', 'no title')})")
            continue
        for src in info["broken_images"]:
            problems.append(f"{page}: image does not load: {src}")
        for href in info["links"]:
            u = urlparse(href)
            if not href.startswith(srv.url):
                continue
            target = root / unquote(u.path).lstrip("/")
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                problems.append(f"{page}: broken internal link: {u.path}")
        if page.lstrip("/").startswith("chapters/"):
            nb = f"{book_path}/{page.lstrip('/')[:-len('.html')]}.ipynb"
            good = [c for c in info["colab"] if c.endswith("/" + nb)
                    and (repo_url is None or c.startswith("https://colab.research.google.com/github/"
                                                          + repo_url.split("github.com/")[-1].strip("/") + "/blob/"))]
            if not good:
                problems.append(f"{page}: no Colab button opening {nb} (found: {info['colab'] or 'none'})")
    return {"pages": found, "problems": problems}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("site", nargs="?", default="_build/html")
    p.add_argument("--repo-url", default=None, help="the repository the Colab buttons must point into")
    p.add_argument("--screenshot", default=None, help="save a screenshot of one chapter here (PNG)")
    a = p.parse_args(argv)
    out = check_site(a.site, repo_url=a.repo_url, screenshot=a.screenshot)
    n_img = sum(i.get("n_images", 0) for i in out["pages"].values())
    print(f"{len(out['pages'])} pages, {n_img} images checked in headless Chromium")
    for line in out["problems"]:
        print("PROBLEM", line)
    return 1 if out["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
