# ssehub — `make run` starts the hub on 127.0.0.1:8080; `make test` installs
# what the tests need and runs everything; `make bench` measures.

CARGO ?= cargo
ARGS ?=

.PHONY: run build test deps lint bench screenshot

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
