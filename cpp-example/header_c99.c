/* The C header as a C99 compiler sees it: built with -std=c99 -Wall -Wextra
 * -Wpedantic -Werror (cpp-example/CMakeLists.txt); runs two calls that
 * cannot fail so that a C99 object links against the library. */
#include "chatxfer.h"

#include <stdio.h>
#include <string.h>

int main(void) {
  enum chatxfer_result r = CHATXFER_RESULT_NULL_PARAMETER;
  const char *name = chatxfer_result_name(r);
  int ok = name != NULL && strlen(name) > 0;
  printf("chatxfer_result_name(%u) = %s\n", (unsigned)r, name ? name : "(null)");
  chatxfer_library_shutdown();
  printf("%s\n", ok ? "c99 header: ok" : "c99 header: FAILED");
  return ok ? 0 : 1;
}
