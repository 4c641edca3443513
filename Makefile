# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_INDEX ?= demo-index
DEMO_COPIES := demo-copies
DEMO_QUERY := assets/photos/hat/2a12baab-f020-42e3-8e6b-5d82e3ed0b55.jpg

.PHONY: demo test venv app clean browser

venv: $(VENV)/.installed

# A fresh checkout's pyproject.toml is newer than the stamp, so the editable install is
# re-pointed at it even when the venv is reused (CI keeps one between runs).
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[test,ray,serve,export]'
	touch $@

demo: venv
	$(BIN)/python scripts/demo_copies.py assets/photos $(DEMO_COPIES)
	$(BIN)/imgembed index assets/photos --index $(DEMO_INDEX)
	$(BIN)/imgembed index $(DEMO_COPIES) --index $(DEMO_INDEX)
	$(BIN)/imgembed duplicates --index $(DEMO_INDEX)
	$(BIN)/imgembed search $(DEMO_QUERY) --index $(DEMO_INDEX) -k 5
	$(BIN)/python scripts/run_app.py --index $(DEMO_INDEX)  # prints the app's address (8502... when 8501 is busy)

test: venv browser
	$(BIN)/python -m pytest -q -p no:cacheprovider

# The browser test drives Debian's Chromium through Playwright (Playwright's own browser download
# cannot work offline). Install it when missing: as root (CI), or through sudo.
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; \
	  else echo "make: /usr/bin/chromium is missing and this user cannot install it: the browser test will be skipped"; exit 0; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; \
	fi

clean:
	rm -rf $(DEMO_INDEX) $(DEMO_COPIES) build *.egg-info
