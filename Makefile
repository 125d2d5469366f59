# clawrelay - one top-level Makefile.
#   make            build every program into bin/ (and the tests)
#   make progs      build the programs only (what the container image needs)
#   make test       install deps, build, run unit + integration tests
#   make demo       install deps, build, start a local stack with a demo
#   make stop       stop the demo stack
#   make bench      run the load generator against a local stack
#   make compose-test  build the images and test the Docker Compose deployment
#   make valgrind   run the unit tests and a short integration test under valgrind
#   make SANITIZE=address,undefined test
comma   := ,
CC       ?= gcc
SANITIZE ?=
O        ?= 2
PKGS      = libnats libprotobuf-c lmdb libcurl libwebsockets libcjson libcrypto libsodium check

WARN   = -Wall -Wextra -Werror -Wstrict-prototypes -Wmissing-prototypes -Wshadow \
         -Wformat=2 -Wpointer-arith -Wcast-qual -Wwrite-strings -Wundef -Wvla \
         -Wno-unused-parameter -Wnull-dereference -Wimplicit-fallthrough
CFLAGS_BASE = -std=c11 -D_GNU_SOURCE -O$(O) -g -pthread -MMD -MP \
         -Icommon -isystem build/gen $(shell pkg-config --cflags libnats lmdb libcjson 2>/dev/null)
LIBS   = -lcivetweb $(shell pkg-config --libs libnats libprotobuf-c lmdb libcurl libwebsockets libcjson libcrypto libsodium 2>/dev/null) -pthread -lm
ifneq ($(SANITIZE),)
CFLAGS_BASE += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all
LDFLAGS += -fsanitize=$(SANITIZE)
BUILD = build-san-$(subst $(comma),-,$(SANITIZE))
else
BUILD = build
endif
CFLAGS_BASE := $(subst build/gen,$(BUILD)/gen,$(CFLAGS_BASE))
CFLAGS += $(CFLAGS_BASE) $(WARN)
GEN_CFLAGS = $(CFLAGS_BASE) -w
BIN = $(if $(SANITIZE),bin-san-$(subst $(comma),-,$(SANITIZE)),bin)

GEN_C   = $(BUILD)/gen/clawrelay.pb-c.c
GEN_H   = $(BUILD)/gen/clawrelay.pb-c.h
COMMON_SRC = $(wildcard common/*.c)
COMMON_OBJ = $(COMMON_SRC:%.c=$(BUILD)/%.o) $(BUILD)/gen/clawrelay.pb-c.o
LIBCOMMON  = $(BUILD)/libcommon.a

SERVICES = $(notdir $(wildcard services/*))
# services/cli is the `clawrelay` command; every other folder is clawrelay-<name>
prog_name = $(if $(filter cli,$(1)),clawrelay,clawrelay-$(1))
PROGS = $(foreach s,$(SERVICES),$(BIN)/$(call prog_name,$(s)))
TOOLS = $(foreach t,$(notdir $(wildcard tools/*)),$(BIN)/clawrelay-$(t))

UNIT_SRC   = $(wildcard tests/unit/test_*.c)
UNIT_BINS  = $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
ITEST_SRC  = $(wildcard tests/integration/itest_*.c)
ITEST_BINS = $(ITEST_SRC:tests/integration/%.c=$(BUILD)/tests/%)
ITEST_LIB  = $(patsubst %.c,$(BUILD)/%.o,$(filter-out $(ITEST_SRC),$(wildcard tests/integration/*.c)))


.SECONDARY:
.PHONY: all progs deps test unit itest demo stop bench valgrind clean docs compose-test
all: $(PROGS) $(TOOLS) $(UNIT_BINS) $(ITEST_BINS)

progs: $(PROGS) $(TOOLS)

deps:
	@sh scripts/deps.sh

$(GEN_C) $(GEN_H): proto/clawrelay.proto
	@mkdir -p $(BUILD)/gen
	protoc-c --c_out=$(BUILD)/gen -Iproto proto/clawrelay.proto

$(BUILD)/gen/clawrelay.pb-c.o: $(GEN_C)
	$(CC) $(GEN_CFLAGS) -c -o $@ $<

$(BUILD)/%.o: %.c $(GEN_H)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(LIBCOMMON): $(COMMON_OBJ)
	@rm -f $@
	ar rcs $@ $^

define service_rule
$(BIN)/$(call prog_name,$(1)): $(patsubst %.c,$(BUILD)/%.o,$(wildcard services/$(1)/*.c)) $(LIBCOMMON)
	@mkdir -p $(BIN)
	$$(CC) $$(LDFLAGS) -o $$@ $$^ $$(LIBS)
endef
$(foreach s,$(SERVICES),$(eval $(call service_rule,$(s))))

define tool_rule
$(BIN)/clawrelay-$(1): $(patsubst %.c,$(BUILD)/%.o,$(wildcard tools/$(1)/*.c)) $(LIBCOMMON)
	@mkdir -p $(BIN)
	$$(CC) $$(LDFLAGS) -o $$@ $$^ $$(LIBS)
endef
$(foreach t,$(notdir $(wildcard tools/*)),$(eval $(call tool_rule,$(t))))

$(BUILD)/tests/test_%: $(BUILD)/tests/unit/test_%.o $(LIBCOMMON)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS) $(shell pkg-config --libs check)

# the notifier's unit test links the notifier's objects, not its main()
NTF_OBJ = $(patsubst %.c,$(BUILD)/%.o,$(filter-out %/main.c,$(wildcard services/notifier/*.c)))
$(BUILD)/tests/test_notifier: $(BUILD)/tests/unit/test_notifier.o $(NTF_OBJ) $(LIBCOMMON)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS) $(shell pkg-config --libs check)

$(BUILD)/tests/itest_%: $(BUILD)/tests/integration/itest_%.o $(ITEST_LIB) $(LIBCOMMON)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS) $(shell pkg-config --libs check)

# the collector's unit test links the collector's objects, not its main()
MC_OBJ = $(patsubst %.c,$(BUILD)/%.o,$(filter-out %/main.c,$(wildcard services/metrics-collector/*.c)))
$(BUILD)/tests/test_mc_roll: $(BUILD)/tests/unit/test_mc_roll.o $(MC_OBJ) $(LIBCOMMON)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS) $(shell pkg-config --libs check)

# unit tests of a service's pure modules link that module too
$(BUILD)/tests/test_conn_key: $(BUILD)/services/connector/conn_key.o
$(BUILD)/tests/test_conn_class: $(BUILD)/services/connector/conn_class.o

test: deps
	$(MAKE) all
	$(MAKE) unit itest

unit: $(UNIT_BINS)
	@sh scripts/run-tests.sh unit $(UNIT_BINS)

itest: $(ITEST_BINS) $(PROGS) $(TOOLS)
	@CLAWRELAY_BIN=$(CURDIR)/$(BIN) sh scripts/run-tests.sh integration $(ITEST_BINS)

demo: deps
	$(MAKE) all
	@sh scripts/demo.sh

stop:
	@sh scripts/demo.sh stop

bench: deps
	$(MAKE) all
	@sh scripts/bench.sh

# the images and the compose test (scripts/compose-test.sh); the host's
# bin/clawrelay talks to the stack through its published ports
compose-test: deps
	$(MAKE) $(BIN)/clawrelay
	@bash scripts/compose-test.sh

valgrind: deps
	$(MAKE) all
	@sh scripts/valgrind.sh $(UNIT_BINS)
	@echo "=== valgrind: every service of the round-trip test"
	@CLAWRELAY_TEST_VALGRIND=1 CLAWRELAY_BIN=$(CURDIR)/$(BIN) $(BUILD)/tests/itest_e2e

docs: $(PROGS)
	@sh scripts/gen-config-doc.sh

clean:
	rm -rf build build-san-* bin bin-san-*

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
