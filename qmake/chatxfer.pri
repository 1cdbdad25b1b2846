# chatxfer for qmake projects (the llfcchat client's llfcchat.pro):
#
#   include(path/to/chatxfer/qmake/chatxfer.pri)
#
# builds the chatxfer static library with cargo as a pre-build step, adds the
# include paths (include/ and the cxx-generated headers) and the link line.
# Needs cargo and cmake on PATH (cmake runs the shared cargo step,
# cmake/chatxfer-cargo.cmake, in script mode; Qt's installer ships one).
#
# Follows the qmake configuration (also per Makefile with debug_and_release):
#   cargo profile   CONFIG(debug): debug, else release;
#   library         libchatxfer.a (Linux, macOS, MinGW), chatxfer.lib (MSVC);
#   MSVC runtime    debug: the bridge is built with /MDd (as the app), and the
#                   Rust standard library's /defaultlib:msvcrt is dropped
#                   (/NODEFAULTLIB:msvcrt.lib); release: /MD;
#   native libs     what rustc printed for this target when cargo ran, read by
#                   the linker from a response file (-Wl,@file; @file for
#                   link.exe), not a list written here.
#
# Variables (set before the include, or on qmake's command line):
#   CHATXFER_CARGO_TARGET_DIR  default $CARGO_TARGET_DIR, else $$OUT_PWD/chatxfer-cargo
#   CHATXFER_PROFILE           debug or release (default: follows CONFIG)
#   CHATXFER_RUST_TARGET       rustc target triple (default: the host's; MinGW:
#                              x86_64-/i686-pc-windows-gnu)
#   CHATXFER_CARGO, CHATXFER_CMAKE  the programs (default: cargo, cmake)
#   CHATXFER_BUILD_COMMAND     1: also build the `chatxfer` command (the
#                              reference server); path in CHATXFER_COMMAND

CHATXFER_ROOT = $$clean_path($$PWD/..)
isEmpty(CHATXFER_CARGO_TARGET_DIR): CHATXFER_CARGO_TARGET_DIR = $$(CARGO_TARGET_DIR)
isEmpty(CHATXFER_CARGO_TARGET_DIR): CHATXFER_CARGO_TARGET_DIR = $$OUT_PWD/chatxfer-cargo
CHATXFER_CARGO_TARGET_DIR = $$absolute_path($$CHATXFER_CARGO_TARGET_DIR, $$OUT_PWD)
isEmpty(CHATXFER_CARGO): CHATXFER_CARGO = cargo
isEmpty(CHATXFER_CMAKE): CHATXFER_CMAKE = cmake

isEmpty(CHATXFER_PROFILE) {
    CONFIG(debug, debug|release): CHATXFER_PROFILE = debug
    else: CHATXFER_PROFILE = release
}

isEmpty(CHATXFER_RUST_TARGET):mingw {
    # rustup's default host on Windows is MSVC; a MinGW app needs the gnu target.
    contains(QT_ARCH, x86_64): CHATXFER_RUST_TARGET = x86_64-pc-windows-gnu
    else: CHATXFER_RUST_TARGET = i686-pc-windows-gnu
}

CHATXFER_MSVC_RUNTIME =
msvc {
    CONFIG(debug, debug|release): CHATXFER_MSVC_RUNTIME = MDd
    else: CHATXFER_MSVC_RUNTIME = MD
}

isEmpty(CHATXFER_RUST_TARGET): CHATXFER_OUT = $$CHATXFER_CARGO_TARGET_DIR/$$CHATXFER_PROFILE
else: CHATXFER_OUT = $$CHATXFER_CARGO_TARGET_DIR/$$CHATXFER_RUST_TARGET/$$CHATXFER_PROFILE
msvc: CHATXFER_LIBRARY = $$CHATXFER_OUT/chatxfer.lib
else: CHATXFER_LIBRARY = $$CHATXFER_OUT/libchatxfer.a
CHATXFER_NATIVE_LIBS_RSP = $$CHATXFER_OUT/chatxfer-native-libs.rsp
CHATXFER_COMMAND = $$CHATXFER_CARGO_TARGET_DIR/$$CHATXFER_PROFILE/chatxfer
win32: CHATXFER_COMMAND = $${CHATXFER_COMMAND}.exe

INCLUDEPATH += $$CHATXFER_ROOT/include $$CHATXFER_CARGO_TARGET_DIR/cxxbridge
DEPENDPATH += $$CHATXFER_ROOT/include

# The cargo step: runs on every build (cargo decides what is stale; a no-op
# when fresh) before the link, which depends on the library.
chatxfer_cargo.target = $$CHATXFER_LIBRARY
chatxfer_cargo.depends = FORCE
chatxfer_cargo.commands = $$shell_quote($$CHATXFER_CMAKE) \
    $$shell_quote(-DCARGO=$$CHATXFER_CARGO) \
    $$shell_quote(-DMANIFEST=$$CHATXFER_ROOT/Cargo.toml) \
    $$shell_quote(-DTARGET_DIR=$$CHATXFER_CARGO_TARGET_DIR) \
    -DPROFILE=$$CHATXFER_PROFILE \
    -DRUST_TARGET=$$CHATXFER_RUST_TARGET \
    -DMSVC_RUNTIME=$$CHATXFER_MSVC_RUNTIME \
    -DBUILD_COMMAND=$$CHATXFER_BUILD_COMMAND \
    $$shell_quote(-DOUT_RSP=$$CHATXFER_NATIVE_LIBS_RSP) \
    $$shell_quote(-DOUT_LIST=$$CHATXFER_OUT/chatxfer-native-libs.txt) \
    -P $$shell_quote($$CHATXFER_ROOT/cmake/chatxfer-cargo.cmake)
QMAKE_EXTRA_TARGETS += chatxfer_cargo
PRE_TARGETDEPS += $$CHATXFER_LIBRARY
!msvc {
    # GNU make: the objects wait for cargo (order only, no rebuild), since the
    # cxx headers they include are written by it -- also under make -j.
    chatxfer_objects.target = $(OBJECTS)
    chatxfer_objects.depends = | $$CHATXFER_LIBRARY
    QMAKE_EXTRA_TARGETS += chatxfer_objects
}

msvc {
    LIBS += $$CHATXFER_LIBRARY
    # link.exe reads response files anywhere and searches libraries in any order.
    QMAKE_LFLAGS += $$shell_quote(@$$CHATXFER_NATIVE_LIBS_RSP)
    equals(CHATXFER_MSVC_RUNTIME, MDd): QMAKE_LFLAGS += /NODEFAULTLIB:msvcrt.lib
} else {
    # After the library: GNU ld resolves in order.
    CHATXFER_RSP_FLAG = -Wl,@$$CHATXFER_NATIVE_LIBS_RSP  # (the comma would split a function call)
    LIBS += $$CHATXFER_LIBRARY $$shell_quote($$CHATXFER_RSP_FLAG)
}
