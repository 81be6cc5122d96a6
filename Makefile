# wmproxyd - see README.md. `make` builds ./wmproxyd; `make check` installs
# what is missing, builds with ASan/UBSan and runs every test.
-include config.mak

CROSS    ?=
CXX      ?= g++
PKG_CONFIG ?= pkg-config
# Cross builds: `make CROSS=arm-linux-gnueabihf-` (or aarch64-linux-gnu-) builds
# build/TRIPLET/wmproxyd (and build/TRIPLET/unit) against SYSROOT, by default
# build/sysroot/armhf|arm64, which scripts/sysroot prepares from Debian's
# packages when it is missing. CXX, SYSROOT, PKG_CONFIG (and PKG_CONFIG_LIBDIR,
# PKG_CONFIG_SYSROOT_DIR) may be given. ./wmproxyd and build/rel are not touched.
ifneq ($(CROSS),)
TRIPLET  := $(patsubst %-,%,$(notdir $(CROSS)))
XARCH    := $(or $(if $(filter arm-linux-gnueabihf,$(TRIPLET)),armhf),$(if $(filter aarch64-linux-gnu,$(TRIPLET)),arm64),$(TRIPLET))
ifeq ($(origin CXX),default)
CXX      := $(CROSS)g++
endif
DEFAULT_SYSROOT := $(CURDIR)/build/sysroot/$(XARCH)
SYSROOT  ?= $(DEFAULT_SYSROOT)
PKG_CONFIG_SYSROOT_DIR ?= $(SYSROOT)
PKG_CONFIG_LIBDIR ?= $(SYSROOT)/usr/lib/$(TRIPLET)/pkgconfig:$(SYSROOT)/usr/lib/pkgconfig:$(SYSROOT)/usr/share/pkgconfig
override B := build/$(TRIPLET)
.DEFAULT_GOAL := cross
ifneq ($(filter all wmproxyd install size check unit e2e demo bench clean,$(MAKECMDGOALS)),)
$(error with CROSS=$(CROSS): `$(filter all wmproxyd install size check unit e2e demo bench clean,$(MAKECMDGOALS))` would use ./wmproxyd or build/; run `make CROSS=$(CROSS)` (builds $(B)/wmproxyd), `make check-cross ARCH=$(XARCH)`, or rm -rf $(B))
endif
endif
PREFIX   ?= /usr/local
DESTDIR  ?=
SBINDIR  ?= $(PREFIX)/sbin
MANDIR   ?= $(PREFIX)/share/man
SYSCONFDIR ?= /etc
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system

# Small by default (-Os, no unwind tables: nothing here throws), with the
# files bytes flow through at -O2. CXXFLAGS comes last and may override.
OPT      ?= -Os
OPT_HOT  ?= -O2
HOT_SRCS = src/mux.cpp src/relay.cpp src/ring.cpp src/reactor.cpp src/reactor_epoll.cpp src/transport_plain.cpp \
           src/http.cpp
SIZEFLAGS = -fno-asynchronous-unwind-tables -fno-unwind-tables -fvisibility=hidden
CXXFLAGS ?=
WARN     = -Wall -Wextra -Werror
BASEFLAGS = -std=c++17 -Iinclude -fno-exceptions -fno-rtti -ffunction-sections -fdata-sections \
            -D_GNU_SOURCE $(if $(SYSROOT),--sysroot=$(SYSROOT))
LDFLAGS  ?=
BASELD   = -Wl,--gc-sections -Wl,--as-needed -Wl,-O1 $(if $(SYSROOT),--sysroot=$(SYSROOT))
LIBS     = -linih -lssl -lcrypto -lpthread

SRCS = src/main.cpp src/conf.cpp src/log.cpp src/syslog_shim.cpp src/reactor.cpp src/reactor_epoll.cpp \
       src/reactor_kqueue.cpp src/sock.cpp src/ring.cpp src/frame.cpp src/mux.cpp src/relay.cpp \
       src/transport_plain.cpp src/tls.cpp src/server.cpp src/client.cpp src/udp.cpp src/socks5.cpp src/proxyproto.cpp src/http.cpp src/proxy.cpp src/http_proxy.cpp
LIBSRCS = $(filter-out src/main.cpp,$(SRCS))
UNIT_SRCS = $(wildcard test/unit/*.cpp)

B = build
OBJS      = $(SRCS:%.cpp=$(B)/rel/%.o)
ASAN_OBJS = $(SRCS:%.cpp=$(B)/asan/%.o)
ASAN_LIB_OBJS = $(LIBSRCS:%.cpp=$(B)/asan/%.o)
UNIT_OBJS = $(UNIT_SRCS:%.cpp=$(B)/asan/%.o)
SAN = -fsanitize=address,undefined -fno-sanitize=vptr -fno-omit-frame-pointer -g -O1

.PHONY: all clean check demo deps unit e2e bench install uninstall size

all: wmproxyd

wmproxyd: $(OBJS)
	$(CXX) $(CXXFLAGS) $(LDFLAGS) $(BASELD) -o $@ $(OBJS) $(LIBS)

$(B)/rel/%.o: %.cpp $(wildcard include/*.h)
	@mkdir -p $(dir $@)
	$(CXX) $(BASEFLAGS) $(SIZEFLAGS) $(WARN) $(if $(filter $<,$(HOT_SRCS)),$(OPT_HOT),$(OPT)) $(CXXFLAGS) -c -o $@ $<

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
	@$(MAKE) --no-print-directory -j$$(nproc 2>/dev/null || echo 2) wmproxyd $(B)/asan/wmproxyd $(B)/asan/unit
	@scripts/check

demo: deps
	@$(MAKE) --no-print-directory wmproxyd
	@scripts/demo

bench: deps
	@$(MAKE) --no-print-directory wmproxyd
	@scripts/bench

size: wmproxyd
	@scripts/size

# The init script and the unit get the paths of this install; example
# configurations never overwrite files already there (they may be edited).
INSTALL_PATHS = sed -e 's|/usr/local/sbin/wmproxyd|$(SBINDIR)/wmproxyd|g' \
                    -e 's|/etc/wmproxy/|$(SYSCONFDIR)/wmproxy/|g' \
                    -e 's|/etc/default/wmproxyd|$(SYSCONFDIR)/default/wmproxyd|g'

install: wmproxyd
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(SYSCONFDIR)/wmproxy \
	    $(DESTDIR)$(SYSCONFDIR)/init.d $(DESTDIR)$(SYSTEMDUNITDIR)
	install -m 755 wmproxyd $(DESTDIR)$(SBINDIR)/wmproxyd
	install -m 644 man/wmproxyd.8 $(DESTDIR)$(MANDIR)/man8/wmproxyd.8
	install -m 644 man/wmproxy.ini.5 $(DESTDIR)$(MANDIR)/man5/wmproxy.ini.5
	$(INSTALL_PATHS) scripts/wmproxyd.init >$(DESTDIR)$(SYSCONFDIR)/init.d/wmproxyd
	chmod 755 $(DESTDIR)$(SYSCONFDIR)/init.d/wmproxyd
	$(INSTALL_PATHS) scripts/wmproxyd.service >$(DESTDIR)$(SYSTEMDUNITDIR)/wmproxyd.service
	chmod 644 $(DESTDIR)$(SYSTEMDUNITDIR)/wmproxyd.service
	for f in conf/*.ini; do t=$(DESTDIR)$(SYSCONFDIR)/wmproxy/$$(basename $$f); \
	    [ -e $$t ] || install -m 640 $$f $$t; done

# configuration files stay: they may hold the operator's edits
uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/wmproxyd $(DESTDIR)$(MANDIR)/man8/wmproxyd.8 $(DESTDIR)$(MANDIR)/man5/wmproxy.ini.5 \
	    $(DESTDIR)$(SYSCONFDIR)/init.d/wmproxyd $(DESTDIR)$(SYSTEMDUNITDIR)/wmproxyd.service

clean:
	rm -rf $(B) wmproxyd

# ---- cross builds (CROSS=TRIPLET-, see the top), `make check-cross ARCH=armhf|arm64`
# The unit tests are cross-built without sanitizers (ASan does not run under
# qemu-user); both binaries run under qemu-user, see scripts/check-cross.
.PHONY: cross check-cross
CROSS_TRIPLET_armhf = arm-linux-gnueabihf
CROSS_TRIPLET_arm64 = aarch64-linux-gnu
check-cross:
	@[ -n "$(CROSS_TRIPLET_$(ARCH))" ] || { echo "make check-cross ARCH=armhf|arm64 (ARCH='$(ARCH)')" >&2; exit 2; }
	@$(MAKE) --no-print-directory CROSS=$(CROSS_TRIPLET_$(ARCH))- cross build/$(CROSS_TRIPLET_$(ARCH))/unit
	@scripts/check-cross $(ARCH)

ifneq ($(CROSS),)
PC_LIBS = $(shell PKG_CONFIG_SYSROOT_DIR='$(PKG_CONFIG_SYSROOT_DIR)' PKG_CONFIG_LIBDIR='$(PKG_CONFIG_LIBDIR)' \
                  $(PKG_CONFIG) --libs inih openssl 2>/dev/null)
XLIBS    = $(if $(strip $(PC_LIBS)),$(PC_LIBS) -lpthread,$(LIBS))
XLD      = $(if $(SYSROOT),-Wl$(comma)-rpath-link$(comma)$(SYSROOT)/usr/lib/$(TRIPLET):$(SYSROOT)/lib/$(TRIPLET))
comma   := ,
# arm64: ld (binutils >= 2.39) pads the file so that RELRO ends on a
# max-page-size boundary, 64 KiB there: up to 64 KiB of zeros in the binary.
# 16 KiB still loads on 4 KiB and 16 KiB page kernels (Raspberry Pi 5), not
# on 64 KiB ones: XMAXPAGE= (empty) links with the default.
XMAXPAGE ?= $(if $(filter aarch64-%,$(TRIPLET)),16384)
XLD     += $(if $(XMAXPAGE),-Wl$(comma)-z$(comma)max-page-size=$(XMAXPAGE))
XLIB_OBJS  = $(LIBSRCS:%.cpp=$(B)/rel/%.o)
XUNIT_OBJS = $(UNIT_SRCS:%.cpp=$(B)/test/%.o)

cross: $(B)/wmproxyd

# armhf: silence GCC's note that the C++ ABI of some std types changed in GCC 7.1
$(OBJS) $(XUNIT_OBJS): WARN += -Wno-psabi

$(B)/wmproxyd: $(OBJS)
	$(CXX) $(CXXFLAGS) $(LDFLAGS) $(BASELD) $(XLD) -o $@ $(OBJS) $(XLIBS)

# doctest needs exceptions and RTTI for its own machinery
$(B)/test/%.o: %.cpp $(wildcard include/*.h)
	@mkdir -p $(dir $@)
	$(CXX) -std=c++17 -Iinclude -D_GNU_SOURCE $(if $(SYSROOT),--sysroot=$(SYSROOT)) $(WARN) $(CXXFLAGS) -c -o $@ $<

$(B)/unit: $(XUNIT_OBJS) $(XLIB_OBJS)
	$(CXX) $(CXXFLAGS) $(LDFLAGS) $(BASELD) $(XLD) -o $@ $(XUNIT_OBJS) $(XLIB_OBJS) $(XLIBS)

# the default sysroot is made on first use (and after `rm -rf build`)
ifeq ($(SYSROOT),$(DEFAULT_SYSROOT))
$(OBJS) $(XUNIT_OBJS): | $(SYSROOT)/.stamp
$(SYSROOT)/.stamp: scripts/sysroot
	scripts/sysroot $(XARCH) $(SYSROOT)
endif
endif

# ---- fuzzing: libFuzzer targets in fuzz/ (clang). `make fuzz FUZZ_SECONDS=N`
# replays fuzz/regress/, then runs each target N seconds (scripts/fuzz). ----
FUZZ_CXX ?= clang++
FUZZ_SECONDS ?= 60
FUZZ_SAN = -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -fno-sanitize=vptr \
           -fno-omit-frame-pointer -g -O1
FUZZ_CXXFLAGS = -std=c++17 -Iinclude -Ifuzz -D_GNU_SOURCE -fno-exceptions -fno-rtti -Wall -Wextra $(FUZZ_SAN)
FUZZ_TARGETS = frame mux http socks5 conf
FUZZ_BINS = $(FUZZ_TARGETS:%=$(B)/fuzz/fuzz_%)
FB = $(B)/fuzz

$(FB)/%.o: %.cpp $(wildcard include/*.h fuzz/*.h)
	@mkdir -p $(dir $@)
	$(FUZZ_CXX) $(FUZZ_CXXFLAGS) -c -o $@ $<

$(FB)/fuzz_frame: $(FB)/fuzz/fuzz_frame.o $(FB)/src/frame.o
	$(FUZZ_CXX) $(FUZZ_SAN) -o $@ $^ -lcrypto
$(FB)/fuzz_mux: $(FB)/fuzz/fuzz_mux.o $(FB)/fuzz/fake_backend.o $(FB)/src/mux.o $(FB)/src/frame.o \
                $(FB)/src/ring.o $(FB)/src/reactor.o $(FB)/src/log.o $(FB)/src/syslog_shim.o
	$(FUZZ_CXX) $(FUZZ_SAN) -o $@ $^ -lcrypto
$(FB)/fuzz_http: $(FB)/fuzz/fuzz_http.o $(FB)/src/http.o
	$(FUZZ_CXX) $(FUZZ_SAN) -o $@ $^
$(FB)/fuzz_socks5: $(FB)/fuzz/fuzz_socks5.o $(FB)/src/socks5.o $(FB)/src/proxyproto.o
	$(FUZZ_CXX) $(FUZZ_SAN) -o $@ $^
$(FB)/fuzz_conf: $(FB)/fuzz/fuzz_conf.o $(FB)/src/conf.o $(FB)/src/http.o $(FB)/src/frame.o
	$(FUZZ_CXX) $(FUZZ_SAN) -o $@ $^ -linih -lcrypto

.PHONY: fuzz fuzz-build
fuzz-build: $(FUZZ_BINS)

fuzz: fuzz-build
	@FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_BIN=$(FB) scripts/fuzz $(FUZZ_TARGETS)
