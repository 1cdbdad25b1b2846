# Builds the chatxfer static library with cargo and records the native
# libraries rustc says it needs. Run in CMake script mode, at build time, by
# both cmake/chatxfer.cmake and qmake/chatxfer.pri (one implementation for
# Linux, macOS, MinGW and MSVC):
#
#   cmake -DCARGO=... -DMANIFEST=.../Cargo.toml -DTARGET_DIR=... -DPROFILE=debug|release
#         [-DRUST_TARGET=triple] [-DMSVC_RUNTIME=MD|MDd] [-DBUILD_COMMAND=ON]
#         -DOUT_RSP=file -DOUT_LIST=file -P chatxfer-cargo.cmake
#
# Why `cargo rustc ... -- --print native-static-libs`: the list depends on
# the target and on the dependencies' build scripts (cxx adds the C++
# standard library), so it cannot be written down once; cargo replays the
# note from its cache when the crate is fresh, so a no-op build still has it.
# (`cargo rustc` with these extra arguments is a unit of its own, apart from
# `cargo build`'s -- a different -C extra-filename here -- so no build
# without the flag replaces that cached output.)
#
# Outputs:
#   OUT_RSP   the list as a linker response file (one item a line), for
#             `-Wl,@file` (GNU ld, lld, ld64) or `@file` (MSVC link.exe), so
#             that an app's link line picks it up at build time;
#   OUT_LIST  the same items as a CMake list (for the installed package).
# Both are rewritten only when their content changes.
cmake_minimum_required(VERSION 3.20)

foreach(v CARGO MANIFEST TARGET_DIR PROFILE OUT_RSP OUT_LIST)
  if(NOT DEFINED ${v} OR "${${v}}" STREQUAL "")
    message(FATAL_ERROR "chatxfer-cargo.cmake: -D${v}=... is required")
  endif()
endforeach()

set(args rustc --manifest-path "${MANIFEST}" -p chatxfer --lib)
set(command_args build --manifest-path "${MANIFEST}" -p chatxfer-tools --bin chatxfer)
if(PROFILE STREQUAL "release")
  list(APPEND args --release)
  list(APPEND command_args --release)
elseif(NOT PROFILE STREQUAL "debug")
  message(FATAL_ERROR "chatxfer-cargo.cmake: PROFILE is debug or release, not '${PROFILE}'")
endif()
if(RUST_TARGET)
  list(APPEND args --target "${RUST_TARGET}")
endif()
list(APPEND args -- --print native-static-libs)

set(ENV{CARGO_TARGET_DIR} "${TARGET_DIR}")
# MSVC: the cxx bridge (and cxx's own cxx.cc, built by the cc crate too) must
# use the app's C runtime, or std::string crossing the sink interface fails
# to link (LNK2038, dtolnay/cxx#880). cc passes -MD itself and appends
# CFLAGS/CXXFLAGS after it; cl.exe keeps the last -M option.
if(MSVC_RUNTIME)
  if(NOT MSVC_RUNTIME MATCHES "^MDd?$")
    message(FATAL_ERROR "chatxfer-cargo.cmake: MSVC_RUNTIME is MD or MDd (Qt uses the DLL runtime)")
  endif()
  set(ENV{CFLAGS} "$ENV{CFLAGS} -${MSVC_RUNTIME}")
  # -EHsc: cxx's own cxx.cc catches exceptions too (build.rs adds it for the
  # bridge); cc passes no /EH option.
  set(ENV{CXXFLAGS} "$ENV{CXXFLAGS} -${MSVC_RUNTIME} -EHsc")
endif()

# cargo's progress and the note are on stderr: shown as they come, and kept.
execute_process(COMMAND "${CARGO}" ${args}
  RESULT_VARIABLE rc
  ERROR_VARIABLE err
  ECHO_ERROR_VARIABLE)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "cargo rustc failed (${rc})")
endif()
if(BUILD_COMMAND)
  # A separate cargo run, so the library build never sees the tools package.
  execute_process(COMMAND "${CARGO}" ${command_args} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "cargo build of the chatxfer command failed (${rc})")
  endif()
endif()

if(NOT err MATCHES "native-static-libs: ([^\r\n]*)")
  message(FATAL_ERROR "cargo's output has no 'native-static-libs:' note; "
    "run `cargo clean -p chatxfer` in ${TARGET_DIR} and build again")
endif()
string(STRIP "${CMAKE_MATCH_1}" libs)
separate_arguments(words NATIVE_COMMAND "${libs}")
# macOS: `-framework Foo` is one link item.
set(items "")
set(framework FALSE)
foreach(w IN LISTS words)
  if(framework)
    list(APPEND items "-framework ${w}")
    set(framework FALSE)
  elseif(w STREQUAL "-framework")
    set(framework TRUE)
  else()
    list(APPEND items "${w}")
  endif()
endforeach()

string(REPLACE ";" "\n" rsp "${items}")
# Response files take `-framework Foo` as two words anyway; one a line is
# read the same way by GNU ld, ld64 and link.exe.
# Compared first and written only when different: several builds sharing a
# cargo target dir may run this step at once, and an unchanged file is then
# never rewritten under a linker reading it.
function(write_if_changed path content)
  if(EXISTS "${path}")
    file(READ "${path}" old)
    if(old STREQUAL content)
      return()
    endif()
  endif()
  file(WRITE "${path}.tmp" "${content}")
  file(RENAME "${path}.tmp" "${path}")
endfunction()
write_if_changed("${OUT_RSP}" "${rsp}\n")
write_if_changed("${OUT_LIST}" "${items}\n")
