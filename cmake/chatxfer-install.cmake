# Run by `cmake --install` (see CMakeLists.txt, which sets the CHATXFER_*
# variables): installs this configuration's library, the headers and
# lib/cmake/chatxfer/chatxferTargets-<CFG>.cmake, read by chatxferConfig.cmake.
set(_prefix "${CMAKE_INSTALL_PREFIX}")
file(INSTALL "${CHATXFER_LIBRARY}" DESTINATION "${_prefix}/lib" RENAME "${CHATXFER_FILE}")
file(INSTALL
  "${CHATXFER_ROOT}/include/chatxfer.h"
  "${CHATXFER_ROOT}/include/chatxfer.hpp"
  "${CHATXFER_ROOT}/include/chatxfer_sink.h"
  "${CHATXFER_ROOT}/include/chatxfer_qt.h"
  "${CHATXFER_ROOT}/include/chatxfer_qt.cpp"
  DESTINATION "${_prefix}/include")
# The cxx headers are symlinks into cargo's build dirs: install the files.
foreach(_h rust/cxx.h chatxfer/src/ffi/bridge.rs.h)
  file(REAL_PATH "${CHATXFER_CXXBRIDGE_DIR}/${_h}" _real)
  get_filename_component(_dir "${_h}" DIRECTORY)
  get_filename_component(_name "${_h}" NAME)
  file(INSTALL "${_real}" DESTINATION "${_prefix}/include/${_dir}" RENAME "${_name}")
endforeach()
file(INSTALL "${CMAKE_CURRENT_LIST_DIR}/chatxferConfig.cmake"
  DESTINATION "${_prefix}/lib/cmake/chatxfer")

file(READ "${CHATXFER_NATIVE_LIBS_LIST}" _libs)
string(STRIP "${_libs}" _libs)
set(_targets "${_prefix}/lib/cmake/chatxfer/chatxferTargets-${CHATXFER_CFG}.cmake")
message(STATUS "Installing: ${_targets}")
file(WRITE "${_targets}" "# Written by cmake --install for one configuration.
set(_chatxfer_file_${CHATXFER_CFG} \"${CHATXFER_FILE}\")
set(_chatxfer_native_${CHATXFER_CFG} \"${_libs}\")
set(_chatxfer_msvc_runtime_${CHATXFER_CFG} \"${CHATXFER_MSVC_RUNTIME}\")
")
