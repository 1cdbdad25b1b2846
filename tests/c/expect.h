/* The pass/fail bookkeeping of the C test programs (bad_calls.c, engine.c):
 * each includes this once; the counters are its own. */
#ifndef CHATXFER_TESTS_EXPECT_H
#define CHATXFER_TESTS_EXPECT_H

#include <stdio.h>

#include "chatxfer.h"

static int passed, failed;

/* A call's result must be `want`; the library's last error is printed if not. */
static void expect(const char *what, chatxfer_result got, chatxfer_result want) {
  if (got == want) {
    passed++;
  } else {
    char msg[256];
    chatxfer_last_error(msg, sizeof msg);
    printf("FAIL %s: got %s, want %s (%s)\n", what, chatxfer_result_name(got),
           chatxfer_result_name(want), msg);
    failed++;
  }
}

static void check(const char *what, int ok) {
  if (ok) {
    passed++;
  } else {
    printf("FAIL %s\n", what);
    failed++;
  }
}

#endif
