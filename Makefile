# Two commands set everything up on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DBT_VENV := .venv-dbt
DBT_STAMP := $(DBT_VENV)/.installed

# The dashboard's chart library, from the npm registry, pinned by version and checksum.
UPLOT_VERSION := 1.6.32
UPLOT_SHA512 := KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw==
VENDOR := fig_server/dashboard/page/vendor
VENDOR_STAMP := $(VENDOR)/.installed

# Statements of the generated oracle in the S3 and Ray passes of `make test` (1,000 locally).
S3_ORACLE_COUNT ?= 120
RAY_ORACLE_COUNT ?= 200

.PHONY: serve test lint bench bench-full clean vendor

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,ray]'
	touch $(STAMP)

# dbt pins libraries that conflict with the dev tools, so it lives in a venv of its own.
$(DBT_STAMP):
	$(PYTHON) -m venv $(DBT_VENV)
	$(DBT_VENV)/bin/pip install -q "dbt-postgres~=1.9.0" "dbt-core~=1.9.0"
	touch $(DBT_STAMP)

$(VENDOR_STAMP):
	rm -rf $(VENDOR) && mkdir -p $(VENDOR)
	cd $(VENDOR) && npm pack --silent uplot@$(UPLOT_VERSION) >/dev/null
	test "$$(openssl dgst -sha512 -binary $(VENDOR)/uplot-$(UPLOT_VERSION).tgz | base64 -w0)" \
		= "$(UPLOT_SHA512)"
	tar -xzf $(VENDOR)/uplot-$(UPLOT_VERSION).tgz -C $(VENDOR) --strip-components=2 \
		package/dist/uPlot.iife.min.js package/dist/uPlot.min.css
	tar -xzf $(VENDOR)/uplot-$(UPLOT_VERSION).tgz -C $(VENDOR) --strip-components=1 \
		package/LICENSE
	rm $(VENDOR)/uplot-$(UPLOT_VERSION).tgz
	touch $(VENDOR_STAMP)

vendor: $(VENDOR_STAMP)

serve: $(STAMP) $(VENDOR_STAMP)
	$(BIN)/fig serve

test: $(STAMP) $(DBT_STAMP) $(VENDOR_STAMP)
	$(BIN)/ruff check fig_server tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q tests
	# the CDC suite and the generated oracle again with the warehouse on an S3 endpoint
	FIG_TEST_WAREHOUSE=s3 FIG_ORACLE_COUNT=$(S3_ORACLE_COUNT) FIG_ORACLE_TIMEOUT_S=45 $(BIN)/python -m pytest -q \
		tests/cdc/test_stream.py tests/federation/test_oracle_generated.py
	# the cold engine's suites and the generated oracle with work units on a Ray cluster
	FIG_TEST_EXECUTOR=ray FIG_ORACLE_COUNT=$(RAY_ORACLE_COUNT) FIG_ORACLE_TIMEOUT_S=45 $(BIN)/python -m pytest -q \
		tests/cold/test_engine.py tests/cold/test_properties.py \
		tests/federation/test_oracle_generated.py

lint: $(STAMP)
	$(BIN)/ruff check fig_server tests benchmarks
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run --scale quick

bench-full: $(STAMP)
	$(BIN)/python -m benchmarks.run --scale full

clean:
	rm -rf $(VENV) $(DBT_VENV) $(VENDOR) .fig
