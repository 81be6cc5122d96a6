# wmproxyd - see README.md. `make` builds ./wmproxyd; `make check` installs
# what is missing, builds with ASan/UBSan and runs every test.
-include config.mak

CROSS    ?=
CXX      ?= g++
ifneq ($(CROSS),)
CXX      := $(CROSS)g++
endif
PKG_CONFIG ?= pkg-config
PREFIX   ?= /usr/local
DESTDIR  ?=
SBINDIR  ?= $(PREFIX)/sbin
MANDIR   ?= $(PREFIX)/share/man
SYSCONFDIR ?= /etc

OPT      ?= -O2
CXXFLAGS ?= $(OPT)
WARN     = -Wall -Wextra -Werror
BASEFLAGS = -std=c++17 -Iinclude -fno-exceptions -fno-rtti -ffunction-sections -fdata-sections \
            -D_GNU_SOURCE $(if $(SYSROOT),--sysroot=$(SYSROOT))
LDFLAGS  ?=
BASELD   = -Wl,--gc-sections $(if $(SYSROOT),--sysroot=$(SYSROOT))
LIBS     = -linih -lssl -lcrypto -lpthread

SRCS = src/main.cpp src/conf.cpp src/log.cpp src/syslog_shim.cpp src/reactor.cpp src/reactor_epoll.cpp \
       src/reactor_kqueue.cpp src/sock.cpp src/ring.cpp src/frame.cpp src/mux.cpp src/relay.cpp \
       src/transport_plain.cpp src/tls.cpp src/server.cpp src/client.cpp src/udp.cpp src/socks5.cpp src/proxyproto.cpp src/http.cpp
LIBSRCS = $(filter-out src/main.cpp,$(SRCS))
UNIT_SRCS = $(wildcard test/unit/*.cpp)

B = build
OBJS      = $(SRCS:%.cpp=$(B)/rel/%.o)
ASAN_OBJS = $(SRCS:%.cpp=$(B)/asan/%.o)
ASAN_LIB_OBJS = $(LIBSRCS:%.cpp=$(B)/asan/%.o)
UNIT_OBJS = $(UNIT_SRCS:%.cpp=$(B)/asan/%.o)
SAN = -fsanitize=address,undefined -fno-omit-frame-pointer -g -O1

.PHONY: all clean check demo deps unit e2e bench install uninstall size

all: wmproxyd

wmproxyd: $(OBJS)
	$(CXX) $(CXXFLAGS) $(LDFLAGS) $(BASELD) -o $@ $(OBJS) $(LIBS)

$(B)/rel/%.o: %.cpp $(wildcard include/*.h)
	@mkdir -p $(dir $@)
	$(CXX) $(BASEFLAGS) $(WARN) $(CXXFLAGS) -c -o $@ $<

# sanitizer build for the tests
$(B)/asan/src/%.o: src/%.cpp $(wildcard include/*.h)
	@mkdir -p $(dir $@)
	$(CXX) $(BASEFLAGS) $(WARN) $(SAN) -c -o $@ $<

# doctest needs exceptions and RTTI for its own machinery
$(B)/asan/test/%.o: test/%.cpp $(wildcard include/*.h)
	@mkdir -p $(dir $@)
	$(CXX) -std=c++17 -Iinclude -D_GNU_SOURCE $(WARN) $(SAN) -c -o $@ $<

$(B)/asan/wmproxyd: $(ASAN_OBJS)
	$(CXX) $(SAN) -o $@ $(ASAN_OBJS) $(LIBS)

$(B)/asan/unit: $(UNIT_OBJS) $(ASAN_LIB_OBJS)
	$(CXX) $(SAN) -o $@ $(UNIT_OBJS) $(ASAN_LIB_OBJS) $(LIBS)

deps:
	@scripts/deps

unit: $(B)/asan/unit
	$(B)/asan/unit

e2e: $(B)/asan/wmproxyd wmproxyd
	python3 test/e2e/run.py

# every test, one summary line at the end; non-zero exit when any failed
check: deps
	@$(MAKE) --no-print-directory wmproxyd $(B)/asan/wmproxyd $(B)/asan/unit
	@scripts/check

demo: deps
	@$(MAKE) --no-print-directory wmproxyd
	@scripts/demo

bench: deps
	@$(MAKE) --no-print-directory wmproxyd
	@scripts/bench

size: wmproxyd
	@scripts/size

install: wmproxyd
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(SYSCONFDIR)/wmproxy
	install -m 755 wmproxyd $(DESTDIR)$(SBINDIR)/wmproxyd
	install -m 644 man/wmproxyd.8 $(DESTDIR)$(MANDIR)/man8/wmproxyd.8
	install -m 644 man/wmproxy.ini.5 $(DESTDIR)$(MANDIR)/man5/wmproxy.ini.5
	for f in conf/*.ini; do t=$(DESTDIR)$(SYSCONFDIR)/wmproxy/$$(basename $$f); \
	    [ -e $$t ] || install -m 640 $$f $$t; done

uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/wmproxyd $(DESTDIR)$(MANDIR)/man8/wmproxyd.8 $(DESTDIR)$(MANDIR)/man5/wmproxy.ini.5

clean:
	rm -rf $(B) wmproxyd
