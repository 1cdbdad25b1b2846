# find_package(chatxfer CONFIG) -> the imported target chatxfer::chatxfer:
# the static library, the include directory and the native libraries rustc
# printed when the package was built (see cmake/CMakeLists.txt); and
# chatxfer::qt, the Qt adapter (chatxfer_qt.h): its source, compiled in the
# app with the app's Qt (the app needs AUTOMOC ON for the header's Q_OBJECT). A Debug and
# a Release build installed into the same prefix both appear: an app's Debug
# configuration uses the Debug one, every other configuration the Release one
# (or whichever one is installed).
get_filename_component(_chatxfer_prefix "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
file(GLOB _chatxfer_configs "${CMAKE_CURRENT_LIST_DIR}/chatxferTargets-*.cmake")
if(NOT _chatxfer_configs)
  set(chatxfer_FOUND FALSE)
  set(chatxfer_NOT_FOUND_MESSAGE "no chatxferTargets-<config>.cmake next to ${CMAKE_CURRENT_LIST_FILE}: was `cmake --install` run?")
  return()
endif()
foreach(_f IN LISTS _chatxfer_configs)
  include("${_f}")
endforeach()

if(NOT TARGET chatxfer::chatxfer)
  add_library(chatxfer::chatxfer STATIC IMPORTED)
  set_target_properties(chatxfer::chatxfer PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${_chatxfer_prefix}/include"
    INTERFACE_COMPILE_FEATURES cxx_std_11)
  # One configuration installed: it serves all.
  if(NOT DEFINED _chatxfer_file_DEBUG)
    set(_chatxfer_file_DEBUG "${_chatxfer_file_RELEASE}")
    set(_chatxfer_native_DEBUG "${_chatxfer_native_RELEASE}")
    set(_chatxfer_msvc_runtime_DEBUG "${_chatxfer_msvc_runtime_RELEASE}")
  elseif(NOT DEFINED _chatxfer_file_RELEASE)
    set(_chatxfer_file_RELEASE "${_chatxfer_file_DEBUG}")
    set(_chatxfer_native_RELEASE "${_chatxfer_native_DEBUG}")
    set(_chatxfer_msvc_runtime_RELEASE "${_chatxfer_msvc_runtime_DEBUG}")
  endif()
  set_target_properties(chatxfer::chatxfer PROPERTIES
    IMPORTED_CONFIGURATIONS "DEBUG;RELEASE"
    IMPORTED_LOCATION_DEBUG "${_chatxfer_prefix}/lib/${_chatxfer_file_DEBUG}"
    IMPORTED_LOCATION_RELEASE "${_chatxfer_prefix}/lib/${_chatxfer_file_RELEASE}"
    IMPORTED_LOCATION "${_chatxfer_prefix}/lib/${_chatxfer_file_RELEASE}"
    MAP_IMPORTED_CONFIG_RELWITHDEBINFO RELEASE
    MAP_IMPORTED_CONFIG_MINSIZEREL RELEASE)
  # Item by item: a list inside one generator expression would be split.
  set(_chatxfer_native "")
  foreach(_l IN LISTS _chatxfer_native_DEBUG)
    list(APPEND _chatxfer_native "$<$<CONFIG:Debug>:${_l}>")
  endforeach()
  foreach(_l IN LISTS _chatxfer_native_RELEASE)
    list(APPEND _chatxfer_native "$<$<NOT:$<CONFIG:Debug>>:${_l}>")
  endforeach()
  set_property(TARGET chatxfer::chatxfer PROPERTY INTERFACE_LINK_LIBRARIES "${_chatxfer_native}")
  if(_chatxfer_msvc_runtime_DEBUG STREQUAL "MDd")
    # Rust's std asks for msvcrt; a /MDd app has msvcrtd.
    set_property(TARGET chatxfer::chatxfer PROPERTY INTERFACE_LINK_OPTIONS
      "$<$<CONFIG:Debug>:/NODEFAULTLIB:msvcrt.lib>")
  endif()
endif()
if(NOT TARGET chatxfer::qt)
  add_library(chatxfer::qt INTERFACE IMPORTED)
  set_target_properties(chatxfer::qt PROPERTIES
    INTERFACE_SOURCES "${_chatxfer_prefix}/include/chatxfer_qt.h;${_chatxfer_prefix}/include/chatxfer_qt.cpp"
    INTERFACE_LINK_LIBRARIES chatxfer::chatxfer)
endif()
set(chatxfer_FOUND TRUE)
