# `EXAMPLE --help` must print its usage, naming every flag in FLAGS, exit 0
# and write nothing (loom-attention-pictures used to write into a folder
# called --help); an unknown flag must exit 2 with a message.
#   cmake -DEXAMPLE=path -DFLAGS="--steps;..." -DWORK_DIR=scratch -P example_help.cmake
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})
execute_process(COMMAND ${EXAMPLE} --help WORKING_DIRECTORY ${WORK_DIR} RESULT_VARIABLE rc OUTPUT_VARIABLE out
                ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${EXAMPLE} --help exited with ${rc}: ${err}")
endif()
get_filename_component(name ${EXAMPLE} NAME)
if(NOT out MATCHES "^usage: ${name}")
  message(FATAL_ERROR "${EXAMPLE} --help printed no usage line:\n${out}")
endif()
foreach(flag ${FLAGS})
  string(FIND "${out}" "${flag}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "${EXAMPLE} --help does not mention ${flag}:\n${out}")
  endif()
endforeach()
file(GLOB written ${WORK_DIR}/*)
if(written)
  message(FATAL_ERROR "${EXAMPLE} --help wrote ${written}")
endif()
execute_process(COMMAND ${EXAMPLE} --no-such-flag 1 WORKING_DIRECTORY ${WORK_DIR} RESULT_VARIABLE rc
                OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 2 OR NOT err MATCHES "unknown flag '--no-such-flag'")
  message(FATAL_ERROR "${EXAMPLE} --no-such-flag 1 exited with ${rc}, stderr: ${err}")
endif()
file(REMOVE_RECURSE ${WORK_DIR})
