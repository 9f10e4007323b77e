"""The headless-browser site check (ngf_lib.sitecheck) finds what it claims to find, on a small site with known
defects; the real site is checked after the smoke build in tests/test_book.py."""
from ngf_lib import sitecheck

PNG_1x1 = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                        "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082")


def page(title, body):
    return f"<!doctype html><html><head><title>{title}</title></head><body>{body}</body></html>"


def test_site_check_reports_broken_images_links_and_colab_buttons(tmp_path):
    site = tmp_path / "html"
    (site / "chapters").mkdir(parents=True)
    (site / "ok.png").write_bytes(PNG_1x1)
    (site / "index.html").write_text(page("home", '<img src="ok.png"><a href="chapters/good.html">good</a>'
                                                  '<a href="missing.html">gone</a>'))
    colab = "https://colab.research.google.com/github/org/repo/blob/main/book/chapters/"
    (site / "chapters" / "good.html").write_text(page("good", f'<a href="{colab}good.ipynb">colab</a>'
                                                              '<img src="../ok.png"><a href="../index.html">up</a>'))
    (site / "chapters" / "bad.html").write_text(page("bad", f'<a href="{colab}other.ipynb">colab</a>'
                                                            '<img src="nothere.png">'))
    out = sitecheck.check_site(site, repo_url="https://github.com/org/repo", screenshot=tmp_path / "shot.png")
    assert set(out["pages"]) == {"/index.html", "/chapters/good.html", "/chapters/bad.html"}
    assert out["pages"]["/index.html"]["n_images"] == 1
    assert sorted(out["problems"]) == sorted([
        "/index.html: broken internal link: /missing.html",
        "/chapters/bad.html: image does not load: nothere.png",
        "/chapters/bad.html: no Colab button opening book/chapters/bad.ipynb (found: "
        f"['{colab}other.ipynb'])",
    ])
    assert (tmp_path / "shot.png").read_bytes()[:4] == b"\x89PNG"


def test_site_check_needs_a_built_site(tmp_path):
    import pytest
    with pytest.raises(FileNotFoundError, match="make book"):
        sitecheck.check_site(tmp_path)
