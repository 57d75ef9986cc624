# The commands the README names. `make run` and `make test` install what is missing first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-omni
PYTEST_ARGS ?=

.PHONY: install run test unit lint bench clean provision deploy

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[ingress,webhooks,worker,deadletter,bench,dev,cli]'
	touch $(STAMP)

install: $(STAMP)

# The console's browser test runs Debian's chromium; install it when it is missing (as root, or
# through sudo). Playwright never downloads a browser of its own here.
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
$(CHROMIUM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium

# exec: make's shell is replaced, so a signal to make's process group reaches the supervisor,
# which forwards it once to every child it started.
run: $(STAMP)
	exec $(PY) -m emulators.localrun

test: $(STAMP) $(CHROMIUM) lint
	$(PY) -m pytest $(PYTEST_ARGS)

unit: $(STAMP)
	$(PY) -m pytest tests/unit tests/deploy $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# The peer bench needs Debian's redis-server (apt-get install redis-server).
bench: $(STAMP)
	$(PY) -m bench.e2e_latency
	$(PY) -m bench.throughput
	$(PY) -m bench.peer_celery
	$(PY) -m bench.sse_fanout
	$(PY) -m bench.batch
	$(PY) -m bench.ratelimit

# A real project (docs/deploy.md): topics, subscriptions, Firestore indexes and TTL, and the
# dead-letter function. Idempotent. make provision PROJECT=my-project REGION=europe-west1
provision: $(STAMP)
	$(PY) -m emulators.provision --project $(PROJECT) --region $(REGION) --deploy-deadletter

# Everything, in order, idempotently (docs/deploy.md): make deploy PROJECT=my-project REGION=europe-west1
# DRY_RUN=1 prints every command and API call and runs none (make's own -n would run nothing and
# print only this recipe). TAG=... overrides the images' tag (default: the commit's short sha);
# ONLY=STEP runs one step; API_KEYS_FILE / WEBHOOK_SECRETS_FILE give those secrets' first version.
# A real run first installs the Cloud Monitoring clients (the `monitoring` extra).
deploy: $(STAMP)
	$(if $(DRY_RUN),,$(PY) -m pip install --quiet --disable-pip-version-check -e '.[monitoring]')
	$(PY) -m deploy --project "$(PROJECT)" --region "$(REGION)" $(if $(TAG),--tag "$(TAG)") \
		$(if $(ONLY),--only "$(ONLY)") $(if $(DRY_RUN),--dry-run) \
		$(if $(API_KEYS_FILE),--api-keys-file "$(API_KEYS_FILE)") \
		$(if $(WEBHOOK_SECRETS_FILE),--webhook-secrets-file "$(WEBHOOK_SECRETS_FILE)")

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
