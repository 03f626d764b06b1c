# ssehub — `make run` starts the hub on 127.0.0.1:8080; `make test` installs
# what the tests need and runs everything; `make bench` measures.

CARGO ?= cargo
ARGS ?=

.PHONY: run build test deps lint bench bench-deps screenshot

run:
	$(CARGO) run --release -- $(ARGS)

build:
	$(CARGO) build --release

# Real components for the end-to-end tests: Redis and headless Chromium.
deps:
	@if ! command -v redis-server >/dev/null || ! command -v chromium >/dev/null; then \
		echo "installing redis-server and chromium"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server chromium >/dev/null; \
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
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx libnginx-mod-nchan >/dev/null; \
	fi
	@if ! command -v redis-server >/dev/null; then \
		echo "installing redis-server"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	fi

# The same scenarios against ssehub, nchan and an axum baseline, in one run
# (under two minutes once built); prints the markdown table and saves it under
# target/bench/. BENCH_ARGS=--quick for a smaller, faster pass.
BENCH_ARGS ?=
bench: bench-deps
	$(CARGO) build --release -p ssehub -p axum-sse -p loadgen
	./target/release/loadgen run $(BENCH_ARGS)
