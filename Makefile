# Two commands for a fresh machine (see README.md):
#   make book   -> installs what it needs into .venv, builds the site into _build/html/
#   make test   -> installs what it needs into .venv, runs the test suite
# Other targets:
#   make chapters PROFILE=cpu   -> re-executes the chapter notebooks (computes only what results/ lacks)
#   make regenerate PROFILE=cpu -> computes what results/ lacks (plans/<profile>.txt), then executes the chapters
#   make all PROFILE=cpu        -> regenerate, then the site
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= cpu
STAMP := $(VENV)/.ngf-installed

.PHONY: book test chapters regenerate all venv clean chromium check-site

$(STAMP): pyproject.toml requirements/lock.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements/lock.txt -e ".[book,test]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3" >/dev/null
	@touch $(STAMP)

venv: $(STAMP)

book: $(STAMP)
	$(VENV)/bin/jupyter-book build book/
	@echo "The site is at $(CURDIR)/_build/html/index.html"

# The site check of the test suite drives Debian's Chromium (installed here if missing; needs root or sudo-less apt).
chromium:
	@command -v chromium >/dev/null 2>&1 || { echo "installing Debian's chromium for the site check"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

test: $(STAMP) chromium
	$(PY) -m pytest -q

check-site: book chromium
	$(PY) -m ngf_lib.sitecheck _build/html --repo-url https://github.com/ngf-book/ngf-book --screenshot _build/chapter.png

chapters: $(STAMP)
	$(PY) -m ngf_lib.chapters --profile $(PROFILE)

regenerate: $(STAMP)
	$(PY) -m ngf_lib.book --profile $(PROFILE)

all: regenerate book

clean:
	rm -rf _build book/_build
