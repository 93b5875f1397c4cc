# slipway: every build, test, demo and packaging target. `make help` lists them.

CC       ?= cc
BUILD    ?= build
OPT      ?= -O2 -g
CSTD      = -std=c11 -D_GNU_SOURCE
WARN      = -Wall -Wextra -Werror -Wshadow -Wmissing-prototypes -Wstrict-prototypes
CPPFLAGS += -Icommon -MMD -MP
SAN      ?=
CFLAGS   += $(CSTD) $(OPT) $(WARN) $(SAN)
LDFLAGS  += $(SAN)

LIBS_BASE  = -lev -lcurl -lcjson -lmbedtls -lmbedx509 -lmbedcrypto -lz -lhttp_parser -lexpat -lpthread -lm
LIBS_COORD = -lsqlite3 -lyaml -larchive
LIBS_TEST  = -lcmocka

# Debian packages the build, the tests and the demo need (`make deps`).
DEB_PACKAGES = build-essential pkg-config clang git python3 ca-certificates curl \
	libev-dev libcurl4-openssl-dev libcjson-dev libmbedtls-dev zlib1g-dev \
	libhttp-parser-dev libexpat1-dev libsqlite3-dev libyaml-dev libarchive-dev libcmocka-dev \
	docker.io docker-registry busybox-static musl-tools openssh-server openssh-client \
	wrk haproxy iproute2 procps cloud-init packer

OBJ = $(BUILD)/obj

COMMON_SRC := $(wildcard common/*.c)
AGENT_SRC  := $(filter-out agent/main.c,$(wildcard agent/*.c))
COORD_SRC  := $(filter-out coordinator/main.c,$(wildcard coordinator/*.c))
CLI_SRC    := $(filter-out cli/main.c,$(wildcard cli/*.c))
SUPPORT_SRC := $(wildcard tests/support/*.c)

objs = $(patsubst %.c,$(OBJ)/%.o,$(1))

AGENT_BIN = $(BUILD)/slipway-agent
COORD_BIN = $(BUILD)/slipway-coordinator
CLI_BIN   = $(BUILD)/slipway
BINS = $(AGENT_BIN) $(COORD_BIN) $(CLI_BIN)

UNIT_SRC   := $(wildcard tests/unit/*/test_*.c)
UNIT_BINS  := $(patsubst tests/%.c,$(BUILD)/tests/%,$(UNIT_SRC))
INTEG_SRC  := $(wildcard tests/integration/test_*.c)
INTEG_BINS := $(patsubst tests/%.c,$(BUILD)/tests/%,$(INTEG_SRC))
HELPER_SRC := $(wildcard tests/helpers/*.c)
HELPER_BINS := $(patsubst tests/helpers/%.c,$(BUILD)/tests/helpers/%,$(HELPER_SRC))
BENCH_SRC  := $(wildcard tests/bench/*.c)
BENCH_BINS := $(patsubst tests/%.c,$(BUILD)/tests/%,$(BENCH_SRC))

# Keep test objects: they are intermediate files of the pattern rules.
.SECONDARY: $(patsubst tests/%.c,$(OBJ)/tests/%.o,$(UNIT_SRC) $(INTEG_SRC) $(HELPER_SRC) $(BENCH_SRC))

.PHONY: all help deps test unit integration check fuzz bench demo demo-down static clean

all: $(BINS)

help:
	@echo "make            build slipway-agent, slipway-coordinator and slipway into $(BUILD)/"
	@echo "make deps       install every Debian package the build, tests and demo need (idempotent)"
	@echo "make test       deps + build + unit and integration tests (real Docker engine); ends with 'N passed, N failed'"
	@echo "make unit       build and run the unit tests only"
	@echo "make integration  run the integration tests only (starts dockerd and a registry if needed)"
	@echo "make check      unit tests under ASan + UBSan (build/asan/)"
	@echo "make fuzz       build the libFuzzer targets and run each for FUZZ_SECONDS (default 20)"
	@echo "make bench      build and run the benchmarks; figures go to stdout"
	@echo "make demo       push-to-serving round trip on the local Docker engine"
	@echo "make demo-down  remove everything the demo started"
	@echo "make static     fully static musl agent (ARCH=x86_64|aarch64)"
	@echo "make clean      remove build/"

deps:
	@missing=$$(for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "deps: installing $$missing"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	else echo "deps: all Debian packages present"; fi

$(OBJ)/tests/%.o: CPPFLAGS += -Iagent -Icoordinator -Icli -Itests/support
$(OBJ)/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@

$(BUILD)/libcommon.a: $(call objs,$(COMMON_SRC))
$(BUILD)/libagent.a: $(call objs,$(AGENT_SRC))
$(BUILD)/libcoordinator.a: $(call objs,$(COORD_SRC))
$(BUILD)/libcli.a: $(call objs,$(CLI_SRC))
$(BUILD)/libsupport.a: $(call objs,$(SUPPORT_SRC))
$(BUILD)/%.a:
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

LIBS_ALL = $(BUILD)/libagent.a $(BUILD)/libcoordinator.a $(BUILD)/libcli.a $(BUILD)/libcommon.a

$(AGENT_BIN): $(OBJ)/agent/main.o $(BUILD)/libagent.a $(BUILD)/libcommon.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS_BASE)
$(COORD_BIN): $(OBJ)/coordinator/main.o $(BUILD)/libcoordinator.a $(BUILD)/libcommon.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS_COORD) $(LIBS_BASE)
$(CLI_BIN): $(OBJ)/cli/main.o $(BUILD)/libcli.a $(BUILD)/libcommon.a
	$(CC) $(LDFLAGS) -o $@ $^ -larchive $(LIBS_BASE)

# Every test links the whole tree as archives: the linker keeps what it uses.
$(BUILD)/tests/%: $(OBJ)/tests/%.o $(BUILD)/libsupport.a $(LIBS_ALL)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $< $(BUILD)/libsupport.a $(LIBS_ALL) $(LIBS_TEST) $(LIBS_COORD) $(LIBS_BASE)

test-bins: $(BINS) $(UNIT_BINS) $(INTEG_BINS) $(HELPER_BINS)

unit: $(UNIT_BINS)
	@tests/run unit $(BUILD)

integration: $(BINS) $(INTEG_BINS) $(HELPER_BINS)
	@tests/run integration $(BUILD)

test: deps
	@$(MAKE) --no-print-directory test-bins
	@tests/run all $(BUILD)

check:
	@$(MAKE) --no-print-directory BUILD=build/asan OPT="-O1 -g -fno-omit-frame-pointer" \
		SAN="-fsanitize=address,undefined -fno-sanitize-recover=all" unit

# libFuzzer targets: one per parser of outside input, built with clang.
FUZZ_SRC  := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BINS := $(patsubst tests/fuzz/%.c,build/fuzz/%,$(FUZZ_SRC))
FUZZ_SECONDS ?= 20
# One sub-make builds the instrumented libraries every target links: common,
# and the coordinator's for its parsers (webhooks, slipway.yml); a target only
# pulls in the objects it uses.
.PHONY: fuzz-lib
fuzz-lib:
	@$(MAKE) --no-print-directory BUILD=build/fuzz CC=clang OPT="-O1 -g" \
		SAN="-fsanitize=address,undefined,fuzzer-no-link" build/fuzz/libcommon.a \
		build/fuzz/libcoordinator.a
build/fuzz/fuzz_%: tests/fuzz/fuzz_%.c fuzz-lib
	clang $(CSTD) -O1 -g $(WARN) -Icommon -Icoordinator -fsanitize=address,undefined,fuzzer \
		-o $@ $< build/fuzz/libcoordinator.a build/fuzz/libcommon.a $(LIBS_COORD) $(LIBS_BASE)

fuzz: $(FUZZ_BINS)
	@tests/fuzz/run $(FUZZ_SECONDS) $(FUZZ_BINS)

bench: $(BINS) $(BENCH_BINS) $(HELPER_BINS)
	@tests/bench/run $(BUILD)

demo: deps
	@$(MAKE) --no-print-directory all
	@examples/demo.sh up $(BUILD)

demo-down:
	@examples/demo.sh down $(BUILD)

static:
	@cross/build.sh $(or $(ARCH),x86_64)

clean:
	rm -rf build

-include $(shell find $(OBJ) -name '*.d' -type f 2>/dev/null)
