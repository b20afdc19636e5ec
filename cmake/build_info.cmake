# Writes freshet_build_info.h (the version and the git commit) for the metric freshet_build_info. Run by the
# freshet_build_info target at every build, so the commit follows new commits without reconfiguring;
# configure_file leaves the header untouched when nothing changed, so nothing recompiles then.
# Inputs: SOURCE_DIR, OUTPUT, PROJECT_VERSION.
execute_process(COMMAND git -C "${SOURCE_DIR}" rev-parse --short=12 HEAD
                OUTPUT_VARIABLE FRESHET_GIT_COMMIT OUTPUT_STRIP_TRAILING_WHITESPACE
                RESULT_VARIABLE git_result ERROR_QUIET)
if(NOT git_result EQUAL 0 OR FRESHET_GIT_COMMIT STREQUAL "")
  set(FRESHET_GIT_COMMIT "unknown")
endif()
configure_file("${SOURCE_DIR}/cmake/freshet_build_info.h.in" "${OUTPUT}" @ONLY)
