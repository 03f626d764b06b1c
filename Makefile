# ssehub — `make run` starts the hub on 127.0.0.1:8080; `make test` installs
# what the tests need and runs everything; `make bench` measures.

CARGO ?= cargo
ARGS ?=
# The event log's directory for `make run` (ignored by git), so history
# survives restarts; `make run DATA=` keeps it in memory instead.
DATA ?= data

.PHONY: run build test deps lint bench bench-deps screenshot

run:
	$(CARGO) run --release -- $(if $(DATA),--data $(DATA)) $(ARGS)

build:
	$(CARGO) build --release

# apt-get install that starts no service: Debian's nginx would otherwise
# start listening on port 80 of every interface (a policy-rc.d that refuses,
# unless the machine has one already).
APT_INSTALL = sh -c 'if [ ! -e /usr/sbin/policy-rc.d ]; then \
	trap "rm -f /usr/sbin/policy-rc.d" EXIT; trap "exit 130" INT TERM; \
	printf "\#!/bin/sh\nexit 101\n" >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d; fi; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$$@" >/dev/null' apt-install

# Real components for the end-to-end tests: Redis, headless Chromium,
# nginx in front of a hub, and Node's eventsource package (under target/,
# which git ignores).
deps:
	@if [ ! -d target/node/node_modules/eventsource ]; then \
		echo "installing node's eventsource package under target/node"; \
		if ! command -v npm >/dev/null; then $(APT_INSTALL) nodejs npm; fi; \
		npm install --no-save --no-audit --no-fund --prefix target/node eventsource@2.0.2 >/dev/null; \
	fi
	@if ! command -v redis-server >/dev/null || ! command -v chromium >/dev/null || [ ! -x /usr/sbin/nginx ]; then \
		echo "installing redis-server, chromium and nginx"; \
		$(APT_INSTALL) redis-server chromium nginx; \
	fi

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

test: deps lint
	$(CARGO) test

# Retakes the README's picture of the page in headless Chromium.
screenshot: deps
	mkdir -p docs
	PAGE_PNG=$(CURDIR)/docs/page.png $(CARGO) test --test it -- --exact browser::screenshot_of_the_page_with_events

# nchan for the benchmark: Debian's nginx and its nchan module; and Redis for
# the two-process scenario.
bench-deps:
	@if [ ! -x /usr/sbin/nginx ] || [ ! -f /usr/lib/nginx/modules/ngx_nchan_module.so ]; then \
		echo "installing nginx and libnginx-mod-nchan"; \
		$(APT_INSTALL) nginx libnginx-mod-nchan; \
	fi
	@if ! command -v redis-server >/dev/null; then \
		echo "installing redis-server"; \
		$(APT_INSTALL) redis-server; \
	fi

# The same scenarios against ssehub, nchan and an axum baseline, in one run
# (about four minutes once built); prints the markdown table and saves it under
# target/bench/. BENCH_ARGS=--quick for a smaller, faster pass.
BENCH_ARGS ?=
bench: bench-deps
	$(CARGO) build --release -p ssehub -p axum-sse -p loadgen
	./target/release/loadgen run $(BENCH_ARGS)
