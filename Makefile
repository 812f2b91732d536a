# qscope - plain Makefile. `make run` installs what is missing, builds and opens the TUI;
# `make test` runs every check and ends with "N passed, N failed".
CC      ?= cc
PREFIX  ?= /usr/local
DESTDIR ?=
BUILD   ?= build
SAN     ?=

# npm (Debian's, unless a node install already brings it) installs llama.cpp's own library for
# the reference checks of tests/sh/ggml.sh.
DEB_PKGS = build-essential pkg-config libncurses-dev libreadline-dev libopenblas-dev \
           liblapacke-dev libcsv-dev libcjson-dev tmux mandoc python3 python3-numpy procps groff-base \
           libonig-dev libutf8proc-dev python3-torch nodejs parallel fortunes clang-format-14

PKG_CORE = openblas lapacke
PKG_UI   = ncursesw readline

# -Wno-format-truncation: snprintf into fixed message buffers truncates on purpose.
# -ftree-vectorize: numeric loops (activations, quantizer kernels) at -O2 stay scalar without it.
CFLAGS_BASE = -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wno-format-truncation -Iinclude -O2 \
              -ftree-vectorize -g -pthread
CORE_CFLAGS = $(CFLAGS_BASE) $(shell pkg-config --cflags $(PKG_CORE) 2>/dev/null) $(SAN)
UI_CFLAGS   = $(CORE_CFLAGS) $(shell pkg-config --cflags $(PKG_UI) 2>/dev/null)
CORE_LIBS   = $(shell pkg-config --libs $(PKG_CORE) 2>/dev/null) -lcsv -lcjson -lonig -lutf8proc -lm \
              -pthread $(SAN)
UI_LIBS     = $(shell pkg-config --libs $(PKG_UI) 2>/dev/null)

CORE_SRC = $(sort $(wildcard src/core/*.c src/model/*.c src/quant/*.c src/analysis/*.c src/cmd/*.c))
TUI_SRC  = $(sort $(wildcard src/tui/*.c))
CORE_OBJ = $(CORE_SRC:%.c=$(BUILD)/%.o)
TUI_OBJ  = $(TUI_SRC:%.c=$(BUILD)/%.o)
UNIT_SRC = $(sort $(wildcard tests/unit/test_*.c))
UNIT_BIN = $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
FUZZ_SRC = $(sort $(wildcard tests/fuzz/fuzz_*.c))
FUZZ_BIN = $(FUZZ_SRC:tests/fuzz/%.c=$(BUILD)/tests/%)
BENCH_SRC = $(sort $(wildcard tests/bench/bench_*.c))
BENCH_BIN = $(BENCH_SRC:tests/bench/%.c=$(BUILD)/bench/%)

.PHONY: all deps run test unit bench install uninstall clean core models data fmt bin fashion fuzz \
        bigmodels zoo test-slurm overnight-plan
all: qscope

# The core library links without ncurses/readline: a layering break fails this link. The
# archive is made anew each time: `ar r` only adds and replaces members, so the object of a
# source file that was split or removed would stay in it and could still be linked in place of
# the new definitions.
$(BUILD)/libqscope_core.a: $(CORE_OBJ)
	@mkdir -p $(@D)
	rm -f $@
	ar rcs $@ $^

$(BUILD)/src/tui/%.o: src/tui/%.c
	@mkdir -p $(@D)
	$(CC) $(UI_CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/src/main.o: src/main.c
	@mkdir -p $(@D)
	$(CC) $(UI_CFLAGS) -DQS_DATADIR='"$(PREFIX)/share/qscope"' -MMD -MP -c $< -o $@

$(BUILD)/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CORE_CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/qscope: $(BUILD)/src/main.o $(TUI_OBJ) $(BUILD)/libqscope_core.a
	$(CC) -o $@ $^ $(CORE_LIBS) $(UI_LIBS)

# ./qscope is the default build's binary; other builds (build-asan) keep theirs in $(BUILD).
qscope: $(BUILD)/qscope
	cp $(BUILD)/qscope $@.tmp && mv -f $@.tmp $@   # a rename works while qscope is running

bin: $(BUILD)/qscope

core: $(BUILD)/libqscope_core.a

# Unit tests and fuzz drivers link against the core only (no curses, no readline).
$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libqscope_core.a tests/unit/test.h tests/unit/bundle.h
	@mkdir -p $(@D)
	$(CC) $(CORE_CFLAGS) -Itests/unit -o $@ $< $(BUILD)/libqscope_core.a $(CORE_LIBS)

$(BUILD)/tests/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/driver.c $(BUILD)/libqscope_core.a
	@mkdir -p $(@D)
	$(CC) $(CORE_CFLAGS) -o $@ $< tests/fuzz/driver.c $(BUILD)/libqscope_core.a $(CORE_LIBS)

# llama.cpp reference check driver (tests/sh/ggml.sh runs it on the npm package's libggml-base.so).
$(BUILD)/tests/ggml_ref: tests/tools/ggml_ref.c $(BUILD)/libqscope_core.a
	@mkdir -p $(@D)
	$(CC) $(CORE_CFLAGS) -o $@ $< $(BUILD)/libqscope_core.a $(CORE_LIBS) -ldl

$(BUILD)/tests/lm_gguf_check: tests/tools/lm_gguf_check.c $(BUILD)/libqscope_core.a
	@mkdir -p $(@D)
	$(CC) $(CORE_CFLAGS) -o $@ $< $(BUILD)/libqscope_core.a $(CORE_LIBS)

$(BUILD)/bench/%: tests/bench/%.c $(BUILD)/libqscope_core.a
	@mkdir -p $(@D)
	$(CC) $(CORE_CFLAGS) -O3 -march=native -o $@ $< $(BUILD)/libqscope_core.a $(CORE_LIBS)

unit: $(UNIT_BIN) $(FUZZ_BIN) $(BUILD)/tests/ggml_ref $(BUILD)/tests/lm_gguf_check

deps:
	@missing=""; for p in $(DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
	  echo "make deps: installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else echo "make deps: all packages present"; fi

run: deps
	$(MAKE) qscope
	./qscope

test: deps
	$(MAKE) qscope unit
	$(MAKE) BUILD=build-asan SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" bin unit
	@bash tests/run.sh

# The fuzz targets under ASan+UBSan, ten times as many mutations per seed as `make test` runs.
FUZZ_ITER ?= 15000
fuzz: deps
	$(MAKE) BUILD=build-asan SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" unit
	@set -e; for t in build-asan/tests/fuzz_*; do \
	  name=$${t##*/fuzz_}; echo "fuzz $$name: $(FUZZ_ITER) mutations per seed"; \
	  ASAN_OPTIONS=detect_leaks=1 $$t -n $(FUZZ_ITER) tests/fuzz/corpus/$$name/*; \
	done; echo "fuzz: all targets clean"

bench: deps
	$(MAKE) qscope $(BENCH_BIN)
	@BIG="$(BIG)" bash tests/bench/run.sh

# Real-size fixtures for `make bench` (not for `make test`), written outside the repository and
# never committed: GPT-2-small (124M, F32) and TinyLlama-1.1B (BF16) shaped folders with random
# N(0, 0.02) weights and 64k-token .bin files, 2.7 GB in all; existing folders are kept.
BIG ?= $(if $(XDG_CACHE_HOME),$(XDG_CACHE_HOME)/qscope/big,$(BUILD)/big)
bigmodels: deps
	@mkdir -p "$(BIG)"
	/usr/bin/python3 tests/tools/make_bigmodels.py "$(BIG)"

# The study's model matrix: six GPT-2 shapes x seeds 42, 123, 999 trained by `qscope train`,
# byte-level on the English text of Debian's fortunes package, ZOO_STEPS steps of 16 x 128 tokens
# each, GNU parallel with one job per core; resumable (finished models are skipped), every model
# must pass the language-model gate. Written outside the repository (ZOO=DIR to choose).
ZOO ?= $(if $(XDG_CACHE_HOME),$(XDG_CACHE_HOME),$(HOME)/.cache)/qscope/zoo
ZOO_STEPS ?= 600
zoo: deps
	$(MAKE) qscope
	ZOO="$(ZOO)" STEPS=$(ZOO_STEPS) bash datasets/tools/zoo.sh

# The bundle goes to PREFIX/share/qscope, where qs_bundle_path finds it (beside PREFIX/bin, or
# the compiled-in QS_DATADIR): every file the README's examples and the sessions name.
SHAREDIR = $(DESTDIR)$(PREFIX)/share/qscope
DATADIR  = $(SHAREDIR)/datasets
LM_DIRS  = $(patsubst %/config.json,%,$(wildcard datasets/models/*/config.json))
install: qscope
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(PREFIX)/share/man/man5 \
	  $(DESTDIR)$(PREFIX)/share/man/man7
	install -d $(DATADIR)/models $(DATADIR)/text $(SHAREDIR)/sessions
	install -m 755 qscope $(DESTDIR)$(PREFIX)/bin/qscope
	install -m 644 datasets/PROVENANCE.md $(DATADIR)/
	install -m 644 $(filter-out datasets/fashion-mnist.csv,$(wildcard datasets/*.csv)) $(DATADIR)/
	install -m 644 $(filter-out %fashion-mlp.safetensors,$(wildcard datasets/models/*.safetensors)) $(DATADIR)/models/
	for d in $(LM_DIRS); do \
	  install -d $(SHAREDIR)/$$d && install -m 644 $$d/* $(SHAREDIR)/$$d/ || exit 1; \
	done
	install -m 644 $(wildcard datasets/text/*) $(DATADIR)/text/
	install -m 644 sessions/README $(wildcard sessions/*.qs) $(SHAREDIR)/sessions/
	install -m 644 man/qscope.1 $(DESTDIR)$(PREFIX)/share/man/man1/qscope.1
	install -m 644 man/qscope-session.5 $(DESTDIR)$(PREFIX)/share/man/man5/qscope-session.5
	install -m 644 man/qscope-methods.7 $(DESTDIR)$(PREFIX)/share/man/man7/qscope-methods.7

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/qscope $(DESTDIR)$(PREFIX)/share/man/man1/qscope.1 \
	      $(DESTDIR)$(PREFIX)/share/man/man5/qscope-session.5 \
	      $(DESTDIR)$(PREFIX)/share/man/man7/qscope-methods.7
	rm -rf $(SHAREDIR)

# The full overnight study over the zoo as two plans of 18 jobs each, Q1 in PLAN and Q2 in PLAN2
# (studies/overnight.sh; nothing run): run each DIR/jobs.txt with GNU parallel or sbatch
# DIR/slurm.sbatch, then `study merge DIR`.
PLAN ?= $(ZOO)/overnight-q1
overnight-plan: qscope
	ZOO="$(ZOO)" PLAN="$(PLAN)" bash studies/overnight.sh

# A small study plan run as a Slurm job array on a one-node Slurm brought up on localhost from
# Debian's slurm-wlm and munge (installed when missing; needs root), merged and compared with the
# in-process run, for Q1 and Q2 (tests/slurm/slurm.sh; two minutes or so).
test-slurm: deps
	$(MAKE) qscope
	@bash tests/slurm/slurm.sh

# Regenerate the bundled data and retrain the bundled models (reproduces the committed metrics).
data: $(BUILD)/tools/gen_toys
	$(BUILD)/tools/gen_toys datasets

$(BUILD)/tools/%: datasets/tools/%.c $(BUILD)/libqscope_core.a
	@mkdir -p $(@D)
	$(CC) $(CORE_CFLAGS) -o $@ $< $(BUILD)/libqscope_core.a $(CORE_LIBS)
models: qscope
	bash datasets/tools/train_models.sh

# Real data from a Debian package, converted here and never committed: the 60,000 Fashion-MNIST
# training images as datasets/fashion-mnist.csv (133 MB, raw 0..255 pixels), and an MLP trained
# on its train split (784-256-128-10; test accuracy 0.835 on its held-out 20 %).
FMNIST = /usr/share/datasets/fashion-mnist
fashion: qscope $(BUILD)/tools/idx2csv
	@dpkg-query -W -f='$${Status}' dataset-fashion-mnist 2>/dev/null | grep -q 'ok installed' || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist)
	@mkdir -p $(BUILD)/fmnist
	zcat $(FMNIST)/train-images-idx3-ubyte.gz > $(BUILD)/fmnist/images
	zcat $(FMNIST)/train-labels-idx1-ubyte.gz > $(BUILD)/fmnist/labels
	$(BUILD)/tools/idx2csv $(BUILD)/fmnist/images $(BUILD)/fmnist/labels datasets/fashion-mnist.csv
	./qscope --no-default -c 'load data datasets/fashion-mnist.csv; train hidden=256,128 epochs=8 lr=0.0003 batch=128 seed=0 out=datasets/models/fashion-mlp.safetensors'

# clang-format's output changes between major versions, so the tree is kept in one: 14 (Debian
# bookworm's). clang-format-14 is used when installed under that name; another major version is
# refused rather than reformatting every file its own way.
CLANG_FORMAT_MAJOR = 14
CLANG_FORMAT ?= $(shell command -v clang-format-$(CLANG_FORMAT_MAJOR) 2>/dev/null || echo clang-format)
fmt:
	@v=$$($(CLANG_FORMAT) --version 2>/dev/null | sed -n 's/.*clang-format version \([0-9][0-9]*\)\..*/\1/p'); \
	if [ "$$v" != "$(CLANG_FORMAT_MAJOR)" ]; then \
	  echo "make fmt: the tree is formatted with clang-format $(CLANG_FORMAT_MAJOR), but $(CLANG_FORMAT) is $${v:+version }$${v:-not installed}: install clang-format-$(CLANG_FORMAT_MAJOR) (apt-get install clang-format-$(CLANG_FORMAT_MAJOR)) or give its path, make fmt CLANG_FORMAT=/path/to/clang-format-$(CLANG_FORMAT_MAJOR)" >&2; \
	  exit 1; \
	fi
	$(CLANG_FORMAT) -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf build build-asan qscope

-include $(CORE_OBJ:.o=.d) $(TUI_OBJ:.o=.d) $(BUILD)/src/main.d
