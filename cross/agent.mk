# cross/agent.mk: the static agent from agent/*.c and common/*.c, for
# cross/build.sh (which passes every variable below). Laid out as the main
# Makefile links slipway-agent (main.o + libagent.a + libcommon.a), so the
# linker takes from the archives only what the agent uses; objects are
# rebuilt only when their sources or headers change.
#
#   CC AR     the musl toolchain         DEPS     prefix of the built libraries
#   OBJ       object directory           BIN      the unstripped agent
#   CFLAGS    warnings and optimisation  LIBS     libraries to link
#   EXCLUDE   sources left out (they need libraries the agent does not link)

COMMON_SRC := $(filter-out $(EXCLUDE),$(wildcard common/*.c))
AGENT_SRC  := $(filter-out agent/main.c $(EXCLUDE),$(wildcard agent/*.c))
objs = $(patsubst %.c,$(OBJ)/%.o,$(1))

# The libraries are system headers, as in the main build (-isystem: libev's
# macros would trip -Wstrict-aliasing otherwise). .dep, not .d: the main
# Makefile includes every *.d under build/.
CPPFLAGS = -Icommon -isystem $(DEPS)/include -MMD -MP -MF $(@:.o=.dep)
LDFLAGS  = -static -Wl,--gc-sections -L$(DEPS)/lib -Wl,-Map=$(BIN).map

$(BIN): $(OBJ)/agent/main.o $(OBJ)/libagent.a $(OBJ)/libcommon.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(OBJ)/libcommon.a: $(call objs,$(COMMON_SRC))
$(OBJ)/libagent.a: $(call objs,$(AGENT_SRC))
$(OBJ)/%.a:
	rm -f $@ && $(AR) rcs $@ $^

$(OBJ)/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@

-include $(patsubst %.c,$(OBJ)/%.dep,$(COMMON_SRC) $(AGENT_SRC) agent/main.c)
