# chatxfer for CMake projects, in the image of corrosion (which is not a
# Debian package): builds the core package `chatxfer` with cargo (only it:
# the workspace's tools package, with the server and the command, stays out
# unless asked for) and defines the target `chatxfer` carrying the static library, the include directories (include/
# and the cxx-generated headers) and the system libraries Rust needs.
#
# In a Qt project's CMakeLists.txt:
#   include(path/to/chatxfer/cmake/chatxfer.cmake)
#   target_link_libraries(app PRIVATE chatxfer)
#
# Options (cache variables; set before the include to change them):
#   CHATXFER_CARGO_TARGET_DIR  cargo's target dir (default: $CARGO_TARGET_DIR,
#                              else <build dir>/chatxfer-cargo)
#   CHATXFER_PROFILE           debug or release (default: release for
#                              Release/RelWithDebInfo/MinSizeRel, else debug)
#   CHATXFER_BUILD_COMMAND     also build the `chatxfer` command of the
#                              chatxfer-tools package (ON/OFF); its path is
#                              then in CHATXFER_COMMAND
include_guard(GLOBAL)
cmake_minimum_required(VERSION 3.19)  # add_dependencies on INTERFACE targets

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

set(CHATXFER_PROFILE "" CACHE STRING "cargo profile for chatxfer: debug or release")
if(NOT CHATXFER_PROFILE)
  if(CMAKE_BUILD_TYPE MATCHES "^(Release|RelWithDebInfo|MinSizeRel)$")
    set(CHATXFER_PROFILE release)
  else()
    set(CHATXFER_PROFILE debug)
  endif()
endif()
option(CHATXFER_BUILD_COMMAND "also build the chatxfer command" OFF)

find_program(CHATXFER_CARGO cargo HINTS "$ENV{HOME}/.cargo/bin" REQUIRED)
find_package(Threads REQUIRED)

set(_chatxfer_args build --manifest-path "${CHATXFER_ROOT}/Cargo.toml" -p chatxfer --lib)
set(_chatxfer_command_args build --manifest-path "${CHATXFER_ROOT}/Cargo.toml"
    -p chatxfer-tools --bin chatxfer)
if(CHATXFER_PROFILE STREQUAL "release")
  list(APPEND _chatxfer_args --release)
  list(APPEND _chatxfer_command_args --release)
endif()
set(_chatxfer_command_step "")
if(CHATXFER_BUILD_COMMAND)
  # A separate cargo run, so the library build never sees the tools package.
  set(_chatxfer_command_step
    COMMAND "${CMAKE_COMMAND}" -E env "CARGO_TARGET_DIR=${CHATXFER_CARGO_TARGET_DIR}"
            "${CHATXFER_CARGO}" ${_chatxfer_command_args})
endif()
set(_chatxfer_out "${CHATXFER_CARGO_TARGET_DIR}/${CHATXFER_PROFILE}")
set(CHATXFER_LIBRARY "${_chatxfer_out}/libchatxfer.a")
set(CHATXFER_COMMAND "${_chatxfer_out}/chatxfer")
set(CHATXFER_CXXBRIDGE_DIR "${CHATXFER_CARGO_TARGET_DIR}/cxxbridge")

# Cargo decides what is stale, so it runs on every build (a no-op when fresh).
add_custom_target(chatxfer_cargo
  COMMAND "${CMAKE_COMMAND}" -E env "CARGO_TARGET_DIR=${CHATXFER_CARGO_TARGET_DIR}"
          "${CHATXFER_CARGO}" ${_chatxfer_args}
  ${_chatxfer_command_step}
  WORKING_DIRECTORY "${CHATXFER_ROOT}"
  BYPRODUCTS "${CHATXFER_LIBRARY}" "${CHATXFER_COMMAND}"
  COMMENT "cargo build: chatxfer (${CHATXFER_PROFILE})"
  USES_TERMINAL
  VERBATIM)

# The cxx headers appear only once cargo has run; the directory must exist
# for CMake to accept it as an include directory.
file(MAKE_DIRECTORY "${CHATXFER_CXXBRIDGE_DIR}")

add_library(chatxfer INTERFACE)
add_dependencies(chatxfer chatxfer_cargo)
target_include_directories(chatxfer INTERFACE
  "${CHATXFER_ROOT}/include" "${CHATXFER_CXXBRIDGE_DIR}")
# What `rustc --print native-static-libs` lists for this crate on Linux
# (libstdc++ for the cxx bridge, so that C programs link too).
target_link_libraries(chatxfer INTERFACE
  "${CHATXFER_LIBRARY}" stdc++ Threads::Threads ${CMAKE_DL_LIBS} m rt util)
target_compile_features(chatxfer INTERFACE cxx_std_17)
