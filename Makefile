# Sprout — the two commands a new user needs: `make demo` and `make test`.
# Everything else here is what those two are made of.

CARGO ?= cargo
TASKS_DIR := target/tasks
SPROUT := target/release/sprout

.PHONY: all build tasks demo test test-tasks test-python lint fmt bench clean install

## Where `make install` puts the binary: $(PREFIX)/bin/sprout.
PREFIX ?= $(HOME)/.local

all: build tasks

## Installs the wasm targets if missing and builds the example tasks to target/tasks/;
## the Python examples (tasks/python, with `sprout build`) to target/tasks/python when
## python3 is installed, and the JavaScript ones (tasks/js) to target/tasks/js when node
## and npm are (each script says loudly when it skips).
tasks: build
	$(build_tasks)

## The task builds themselves, with whichever $(SPROUT) is there (`make test` builds it
## with the test build, so the crate is compiled once, not once per feature set).
define build_tasks
	./tasks/build.sh $(TASKS_DIR)
	./tasks/python/build.sh $(SPROUT) $(TASKS_DIR)/python
	./tasks/js/build.sh $(SPROUT) $(TASKS_DIR)/js
endef

## Builds the sprout binary (release).
build:
	$(CARGO) build --release --bin sprout

## Builds everything, starts a worker on the embedded SQLite broker, sends a mix of
## jobs, prints every result and a summary, and stops the worker.
demo: build tasks
	./examples/demo/run.sh $(SPROUT) $(TASKS_DIR)

## The whole test suite: host unit + integration tests (real binary, real wasm tasks,
## real SQLite; Redis tests run when Redis is reachable), guest SDK and task unit tests.
## The tests that measure time (`timing_*`) run last, one at a time, on a machine
## nothing else of the suite is loading; their bounds catch regressions, not a few
## percent (the figures themselves: `make bench`, BENCHMARKS.md).
## The test build comes first and makes $(SPROUT) too (its dev-dependencies turn on other
## features of shared crates, so a separate `make build` would compile wasmtime and the
## crate a second time); the tasks are then built with that binary.
test: test-python
	$(CARGO) test --workspace --release --no-run
	$(build_tasks)
	$(CARGO) test --workspace --release -- --skip timing_
	$(CARGO) test --workspace --release timing_ -- --test-threads=1
	CARGO_TARGET_DIR=target/wasm $(CARGO) test --manifest-path tasks/Cargo.toml

## Builds sprout and the example tasks and copies the binary to $(PREFIX)/bin (default
## ~/.local/bin; `make install PREFIX=/usr/local` for a system-wide one).
install: build tasks
	install -d $(PREFIX)/bin
	install -m 0755 $(SPROUT) $(PREFIX)/bin/sprout
	@echo "installed $(PREFIX)/bin/sprout"
	@case ":$$PATH:" in *":$(PREFIX)/bin:"*) ;; *) echo "note: $(PREFIX)/bin is not on PATH: export PATH=\"$(PREFIX)/bin:\$$PATH\"";; esac

## The Python SDK's own tests and the Python examples' unit tests: plain pytest on the
## SDK's native fallback (nothing is built). Skipped, loudly, without python3.
test-python:
	@if command -v python3 >/dev/null 2>&1; then \
		venv="$$(./guest-sdk/python/setup_venv.sh)" && \
		(cd guest-sdk/python && "$$venv/bin/pytest" -q -p no:cacheprovider) && \
		(cd tasks/python && PYTHONPATH=../../guest-sdk/python "$$venv/bin/pytest" -q -p no:cacheprovider); \
	else \
		echo "make test-python: SKIPPED: python3 is not installed (the Python SDK tests need it)"; \
	fi

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Benchmarks (numbers go to BENCHMARKS.md). The Redis and Celery ones run when Redis
## is reachable at 127.0.0.1:6379.
bench: build tasks
	$(CARGO) bench -p sprout --bench sandbox
	$(CARGO) bench -p sprout --bench worker
	$(CARGO) bench -p sprout --bench sqlite_broker
	$(CARGO) bench -p sprout --bench prefork
	@if [ -f $(TASKS_DIR)/python/add.wasm ]; then \
		$(CARGO) bench -p sprout --bench python; \
	else \
		echo "make bench: no Python tasks in $(TASKS_DIR)/python (python3 missing?); skipped the Python bench"; \
	fi
	$(CARGO) build --release -p feed-hub
	target/release/feed-hub run -n 1000 --spawn-worker $(SPROUT) -c 1000 --tasks $(TASKS_DIR)
	target/release/feed-hub run -n 10000 --spawn-worker $(SPROUT) -c 1000 --tasks $(TASKS_DIR)
	./host/benches/feeds_beside_hogs.sh
	@if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then \
		$(CARGO) bench -p sprout --bench redis_broker && \
		$(CARGO) bench -p sprout --bench control && \
		./host/benches/redis_drain.sh && \
		./host/benches/celery_compare.sh && \
		if [ -f $(TASKS_DIR)/python/add.wasm ]; then \
			./host/benches/celery_compare.sh --python --jobs 5000 --celery-jobs 3000 --concurrency 100 --workers sprout,solo,prefork; \
		fi; \
	else \
		echo "make bench: no Redis at 127.0.0.1:6379; skipped the Redis and Celery benchmarks"; \
	fi
	@if [ "$$(id -u)" = 0 ] && command -v ip >/dev/null && command -v redis-server >/dev/null; then \
		./host/benches/fleet.sh 10000 sleep '[0.2]' 100 3 && \
		./host/benches/fleet.sh 50000 add '[2, 3]' 200 3; \
	else \
		echo "make bench: the fleet benchmark needs root, ip and redis-server; skipped"; \
	fi

clean:
	$(CARGO) clean
	rm -f sprout.db sprout.db-wal sprout.db-shm
