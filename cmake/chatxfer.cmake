# chatxfer for CMake projects, in the image of corrosion (which is not a
# Debian package): builds the core package `chatxfer` with cargo (only it:
# the workspace's tools package, with the server and the command, stays out
# unless asked for) and defines the target `chatxfer` (alias
# `chatxfer::chatxfer`, the name the installed package gives) carrying the
# static library, the include directories (include/ and the cxx-generated
# headers) and the native libraries rustc says the library needs.
#
# In a Qt project's CMakeLists.txt (in-tree):
#   include(path/to/chatxfer/cmake/chatxfer.cmake)
#   target_link_libraries(app PRIVATE chatxfer)
# or, with the Qt adapter (chatxfer_qt.h; the app has AUTOMOC ON):
#   target_link_libraries(app PRIVATE chatxfer::qt)
# or, after installing (cmake -S chatxfer/cmake -B b && cmake --build b &&
# cmake --install b --prefix P; see cmake/CMakeLists.txt):
#   find_package(chatxfer CONFIG REQUIRED)      # CMAKE_PREFIX_PATH=P
#   target_link_libraries(app PRIVATE chatxfer::chatxfer)
#
# What follows the app's configuration (single- and multi-config generators):
#   cargo profile   Debug -> debug; Release, RelWithDebInfo, MinSizeRel ->
#                   release (CHATXFER_PROFILE overrides);
#   library name    libchatxfer.a (Linux, macOS, MinGW) or chatxfer.lib (MSVC),
#                   from CMake's static library prefix/suffix;
#   MSVC runtime    the app's CMAKE_MSVC_RUNTIME_LIBRARY (default /MDd for
#                   Debug, /MD otherwise) is passed to the C++ bridge's build
#                   through CXXFLAGS/CFLAGS; with /MDd the Rust standard
#                   library's /defaultlib:msvcrt is dropped (/NODEFAULTLIB).
#                   The static runtime (/MT) is not supported (Qt uses /MD).
#   native libs     written by cargo's step into a response file the link line
#                   reads (`-Wl,@file`; `@file` for link.exe), so they are what
#                   rustc printed for this target and build, not a list here.
#
# Options (cache variables; set before the include to change them):
#   CHATXFER_CARGO_TARGET_DIR  cargo's target dir (default: $CARGO_TARGET_DIR,
#                              else <build dir>/chatxfer-cargo)
#   CHATXFER_PROFILE           debug or release (default: follows the config)
#   CHATXFER_RUST_TARGET       rustc target triple (default: the host's; with
#                              MinGW x86_64-/i686-pc-windows-gnu)
#   CHATXFER_BUILD_COMMAND     also build the `chatxfer` command of the
#                              chatxfer-tools package (ON/OFF); its path is
#                              then in CHATXFER_COMMAND
include_guard(GLOBAL)
cmake_minimum_required(VERSION 3.20)  # generator expressions in BYPRODUCTS

get_filename_component(CHATXFER_ROOT "${CMAKE_CURRENT_LIST_DIR}/.." ABSOLUTE)

set(CHATXFER_CARGO_TARGET_DIR "" CACHE PATH "cargo target dir for chatxfer")
if(NOT CHATXFER_CARGO_TARGET_DIR)
  if(DEFINED ENV{CARGO_TARGET_DIR} AND NOT "$ENV{CARGO_TARGET_DIR}" STREQUAL "")
    set(CHATXFER_CARGO_TARGET_DIR "$ENV{CARGO_TARGET_DIR}")
  else()
    set(CHATXFER_CARGO_TARGET_DIR "${CMAKE_BINARY_DIR}/chatxfer-cargo")
  endif()
endif()
get_filename_component(CHATXFER_CARGO_TARGET_DIR "${CHATXFER_CARGO_TARGET_DIR}" ABSOLUTE)

set(CHATXFER_PROFILE "" CACHE STRING "cargo profile for chatxfer: debug, release, or empty to follow the configuration")
set(CHATXFER_RUST_TARGET "" CACHE STRING "rustc target triple for chatxfer (empty: the host's)")
option(CHATXFER_BUILD_COMMAND "also build the chatxfer command" OFF)

find_program(CHATXFER_CARGO cargo HINTS "$ENV{HOME}/.cargo/bin" REQUIRED)

if(CHATXFER_PROFILE)
  set(_chatxfer_profile "${CHATXFER_PROFILE}")
else()
  set(_chatxfer_profile "$<IF:$<CONFIG:Release,RelWithDebInfo,MinSizeRel>,release,debug>")
endif()

set(_chatxfer_triple "${CHATXFER_RUST_TARGET}")
if(NOT _chatxfer_triple AND MINGW)
  # rustup's default host on Windows is MSVC; a MinGW app needs the gnu target.
  if(CMAKE_SIZEOF_VOID_P EQUAL 8)
    set(_chatxfer_triple x86_64-pc-windows-gnu)
  else()
    set(_chatxfer_triple i686-pc-windows-gnu)
  endif()
endif()

set(_chatxfer_runtime "")
if(MSVC)
  if(DEFINED CMAKE_MSVC_RUNTIME_LIBRARY)
    set(_chatxfer_crt "${CMAKE_MSVC_RUNTIME_LIBRARY}")
  else()
    set(_chatxfer_crt "MultiThreaded$<$<CONFIG:Debug>:Debug>DLL")  # CMake's default
  endif()
  set(_chatxfer_runtime "$<IF:$<STREQUAL:${_chatxfer_crt},MultiThreadedDebugDLL>,MDd,MD>")
endif()

if(_chatxfer_triple)
  set(_chatxfer_out "${CHATXFER_CARGO_TARGET_DIR}/${_chatxfer_triple}/${_chatxfer_profile}")
else()
  set(_chatxfer_out "${CHATXFER_CARGO_TARGET_DIR}/${_chatxfer_profile}")
endif()
set(CHATXFER_LIBRARY
  "${_chatxfer_out}/${CMAKE_STATIC_LIBRARY_PREFIX}chatxfer${CMAKE_STATIC_LIBRARY_SUFFIX}")
# The command runs on the build machine: the host's profile dir.
set(CHATXFER_COMMAND "${CHATXFER_CARGO_TARGET_DIR}/${_chatxfer_profile}/chatxfer${CMAKE_EXECUTABLE_SUFFIX}")
set(CHATXFER_NATIVE_LIBS_RSP "${_chatxfer_out}/chatxfer-native-libs.rsp")
set(CHATXFER_NATIVE_LIBS_LIST "${_chatxfer_out}/chatxfer-native-libs.txt")
set(CHATXFER_CXXBRIDGE_DIR "${CHATXFER_CARGO_TARGET_DIR}/cxxbridge")

# Cargo decides what is stale, so it runs on every build (a no-op when fresh).
add_custom_target(chatxfer_cargo
  COMMAND "${CMAKE_COMMAND}"
          "-DCARGO=${CHATXFER_CARGO}"
          "-DMANIFEST=${CHATXFER_ROOT}/Cargo.toml"
          "-DTARGET_DIR=${CHATXFER_CARGO_TARGET_DIR}"
          "-DPROFILE=${_chatxfer_profile}"
          "-DRUST_TARGET=${_chatxfer_triple}"
          "-DMSVC_RUNTIME=${_chatxfer_runtime}"
          "-DBUILD_COMMAND=${CHATXFER_BUILD_COMMAND}"
          "-DOUT_RSP=${CHATXFER_NATIVE_LIBS_RSP}"
          "-DOUT_LIST=${CHATXFER_NATIVE_LIBS_LIST}"
          -P "${CHATXFER_ROOT}/cmake/chatxfer-cargo.cmake"
  WORKING_DIRECTORY "${CHATXFER_ROOT}"
  BYPRODUCTS "${CHATXFER_LIBRARY}" "${CHATXFER_NATIVE_LIBS_RSP}" "${CHATXFER_NATIVE_LIBS_LIST}"
  COMMENT "cargo: chatxfer (${_chatxfer_profile})"
  USES_TERMINAL
  VERBATIM)

# The cxx headers appear only once cargo has run; the directory must exist
# for CMake to accept it as an include directory.
file(MAKE_DIRECTORY "${CHATXFER_CXXBRIDGE_DIR}")

add_library(chatxfer INTERFACE)
add_library(chatxfer::chatxfer ALIAS chatxfer)
add_dependencies(chatxfer chatxfer_cargo)
target_include_directories(chatxfer INTERFACE
  "${CHATXFER_ROOT}/include" "${CHATXFER_CXXBRIDGE_DIR}")
target_link_libraries(chatxfer INTERFACE "${CHATXFER_LIBRARY}")
if(MSVC)
  # link.exe reads response files anywhere and searches libraries in any order.
  target_link_options(chatxfer INTERFACE "@${CHATXFER_NATIVE_LIBS_RSP}"
    "$<$<STREQUAL:${_chatxfer_runtime},MDd>:/NODEFAULTLIB:msvcrt.lib>")
else()
  # After the library on the link line: GNU ld resolves in order.
  target_link_libraries(chatxfer INTERFACE "-Wl,@${CHATXFER_NATIVE_LIBS_RSP}")
endif()
# The public headers are C++11 (the bridge itself is built as C++17 by cargo).
target_compile_features(chatxfer INTERFACE cxx_std_11)

# The Qt adapter (include/chatxfer_qt.h, chatxfer::QtTransfers): its source
# is compiled in the app, with the app's Qt 5 or 6, and its header has a
# Q_OBJECT, so the app needs AUTOMOC (listed as a source, moc sees it).
# The app links its Qt itself, as it does anyway.
add_library(chatxfer_qt INTERFACE)
add_library(chatxfer::qt ALIAS chatxfer_qt)
target_sources(chatxfer_qt INTERFACE
  "${CHATXFER_ROOT}/include/chatxfer_qt.h" "${CHATXFER_ROOT}/include/chatxfer_qt.cpp")
target_link_libraries(chatxfer_qt INTERFACE chatxfer)
