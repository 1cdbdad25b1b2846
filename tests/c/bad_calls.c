/* The C ABI's bad inputs: every one must give an error result (never a
 * crash or undefined behaviour), out-parameters must stay untouched on
 * failure, and the library must stay usable afterwards.
 * Built with -Wall -Wextra -Werror by cpp-example/CMakeLists.txt; run by
 * tools/tests/cpp.rs. Prints "N passed, M failed"; exits 0 only if M == 0. */
#define _POSIX_C_SOURCE 200809L /* nanosleep */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "chatxfer.h"
#include "expect.h"

/* Written by the library's event thread, read by main. */
static atomic_int events;
static void on_event(void *user_data, const chatxfer_event *e) {
  (void)e;
  atomic_fetch_add((atomic_int *)user_data, 1);
}

/* Log lines at INFO or above, and any line above the filter. */
static atomic_int info_lines, too_verbose;
static void on_log(void *user_data, chatxfer_log_level level, const char *target,
                   const char *message) {
  (void)user_data;
  if (level > CHATXFER_LOG_LEVEL_INFO) atomic_fetch_add(&too_verbose, 1);
  if (level == CHATXFER_LOG_LEVEL_INFO && strncmp(target, "chatxfer", 8) == 0 && message[0])
    atomic_fetch_add(&info_lines, 1);
}

int main(void) {
  const char *bad_utf8 = "caf\xc3\x28.png"; /* 0xC3 0x28: not UTF-8 */
  chatxfer_client *c = NULL;
  chatxfer_file_status st;
  chatxfer_upload_spec spec;
  chatxfer_download_spec dl;
  char msg[256];

  /* NULL handle and NULL out-parameters. */
  expect("new(out=NULL)", chatxfer_client_new(NULL, NULL, NULL), CHATXFER_RESULT_NULL_PARAMETER);
  expect("connect(NULL)", chatxfer_client_connect(NULL, "127.0.0.1", 1), CHATXFER_RESULT_NULL_PARAMETER);
  expect("pause(NULL)", chatxfer_client_pause(NULL, "x"), CHATXFER_RESULT_NULL_PARAMETER);
  expect("resume(NULL)", chatxfer_client_resume(NULL, "x"), CHATXFER_RESULT_NULL_PARAMETER);
  expect("batch_send(NULL)", chatxfer_client_batch_send(NULL, "x"), CHATXFER_RESULT_NULL_PARAMETER);
  expect("cancel(NULL)", chatxfer_client_cancel(NULL, "x"), CHATXFER_RESULT_NULL_PARAMETER);
  expect("shutdown(NULL)", chatxfer_client_shutdown(NULL), CHATXFER_RESULT_NULL_PARAMETER);
  expect("add_upload(NULL)", chatxfer_client_add_upload(NULL, NULL), CHATXFER_RESULT_NULL_PARAMETER);
  expect("add_download(NULL)", chatxfer_client_add_download(NULL, NULL), CHATXFER_RESULT_NULL_PARAMETER);
  expect("start_download(NULL)", chatxfer_client_start_download(NULL, "x"), CHATXFER_RESULT_NULL_PARAMETER);
  chatxfer_client_free(NULL); /* allowed */
  check("last_error says NULL", chatxfer_last_error(msg, sizeof msg) > 0 && strstr(msg, "NULL") != NULL);
  check("last_error(NULL, 0) gives the length", chatxfer_last_error(NULL, 0) == strlen(msg));
  check("result_name(unknown)", strcmp(chatxfer_result_name(4242), "UNKNOWN") == 0);
  check("result_name(SHUT_DOWN)", strcmp(chatxfer_result_name(CHATXFER_RESULT_SHUT_DOWN), "SHUT_DOWN") == 0);
  check("result_description(NULL_PARAMETER)",
        strcmp(chatxfer_result_description(CHATXFER_RESULT_NULL_PARAMETER), "A pointer argument was NULL.") == 0);
  check("result_description(unknown)", strcmp(chatxfer_result_description(4242), "") == 0);
  /* The failure codes of a FAILED event are the documented numbers. */
  check("failure codes", CHATXFER_FAILURE_SOURCE == 2001 && CHATXFER_FAILURE_UNCONFIRMED == 2002 &&
                             CHATXFER_FAILURE_BAD_REPLY == 2003 && CHATXFER_FAILURE_LOCAL == 2004);

  /* Logs: a bad level is refused; INFO and above go to on_log. */
  expect("set_log_callback(level 99)", chatxfer_set_log_callback(on_log, NULL, 99), CHATXFER_RESULT_INVALID_ARGUMENT);
  expect("set_log_callback(INFO)", chatxfer_set_log_callback(on_log, NULL, CHATXFER_LOG_LEVEL_INFO), CHATXFER_RESULT_OK);
  /* Settings: from another header version, refused; a window beyond the
     memory bound, refused at connect; the defaults, accepted. */
  {
    chatxfer_options opt;
    chatxfer_client *o = NULL;
    chatxfer_options_init(&opt);
    check("options default to the appending server", opt.server_appends);
    check("options default give-up budget", opt.give_up_after_ms == 600000);
    expect("new_with(options=NULL)", chatxfer_client_new_with(NULL, NULL, NULL, &o), CHATXFER_RESULT_NULL_PARAMETER);
    opt.struct_size -= 8;
    expect("new_with(old struct_size)", chatxfer_client_new_with(NULL, NULL, &opt, &o), CHATXFER_RESULT_INVALID_ARGUMENT);
    check("out untouched on failure", o == NULL);
    chatxfer_options_init(&opt);
    opt.max_window = 1000000;
    opt.token = "tok";
    opt.rate_limit = 100000;
    expect("new_with", chatxfer_client_new_with(NULL, NULL, &opt, &o), CHATXFER_RESULT_OK);
    expect("connect(window too big)", chatxfer_client_connect(o, "127.0.0.1", 1), CHATXFER_RESULT_INVALID_ARGUMENT);
    chatxfer_client_free(o);
    o = NULL;
    chatxfer_options_init(&opt);
    expect("new_with(defaults)", chatxfer_client_new_with(NULL, NULL, &opt, &o), CHATXFER_RESULT_OK);
    expect("connect(defaults)", chatxfer_client_connect(o, "127.0.0.1", 1), CHATXFER_RESULT_OK);
    expect("close", chatxfer_client_close(o), CHATXFER_RESULT_OK);
    chatxfer_client_free(o);
  }
  expect("new", chatxfer_client_new(on_event, &events, &c), CHATXFER_RESULT_OK);
  if (c == NULL) {
    printf("FAIL no client\n");
    return 1;
  }
  check("last_error cleared by a success", chatxfer_last_error(NULL, 0) == 0);

  /* Before connect. */
  expect("pause before connect", chatxfer_client_pause(c, "x"), CHATXFER_RESULT_NOT_CONNECTED);
  expect("disconnect before connect", chatxfer_client_disconnect(c), CHATXFER_RESULT_NOT_CONNECTED);
  memset(&dl, 0, sizeof dl);
  dl.name = "d1";
  dl.message_id = 42;
  dl.uid = 1;
  dl.token = "tok";
  dl.dest_dir = "/tmp";
  expect("add_download before connect", chatxfer_client_add_download(c, &dl), CHATXFER_RESULT_NOT_CONNECTED);
  expect("start_download before connect", chatxfer_client_start_download(c, "d1"), CHATXFER_RESULT_NOT_CONNECTED);
  expect("connect(host=NULL)", chatxfer_client_connect(c, NULL, 1), CHATXFER_RESULT_NULL_PARAMETER);
  expect("connect(host=bad utf8)", chatxfer_client_connect(c, bad_utf8, 1), CHATXFER_RESULT_INVALID_UTF8);
  expect("connect(port=0)", chatxfer_client_connect(c, "127.0.0.1", 0), CHATXFER_RESULT_INVALID_ARGUMENT);
  /* Nothing listens on port 1: the client keeps retrying in the background. */
  expect("connect", chatxfer_client_connect(c, "127.0.0.1", 1), CHATXFER_RESULT_OK);
  expect("connect twice", chatxfer_client_connect(c, "127.0.0.1", 1), CHATXFER_RESULT_ALREADY_CONNECTED);
  /* Logout and re-login (to another port) on the same object. */
  expect("disconnect", chatxfer_client_disconnect(c), CHATXFER_RESULT_OK);
  expect("connect after disconnect", chatxfer_client_connect(c, "127.0.0.1", 2), CHATXFER_RESULT_OK);
  expect("connect again", chatxfer_client_connect(c, "127.0.0.1", 1), CHATXFER_RESULT_ALREADY_CONNECTED);
  expect("disconnect(NULL)", chatxfer_client_disconnect(NULL), CHATXFER_RESULT_NULL_PARAMETER);
  expect("set_message_id(NULL)", chatxfer_client_set_message_id(NULL, "x", 5), CHATXFER_RESULT_NULL_PARAMETER);
  expect("set_message_id(name=NULL)", chatxfer_client_set_message_id(c, NULL, 5), CHATXFER_RESULT_NULL_PARAMETER);
  expect("set_message_id(unknown)", chatxfer_client_set_message_id(c, "nope", 5), CHATXFER_RESULT_UNKNOWN_NAME);
  expect("compute_md5(NULL)", chatxfer_client_compute_md5(NULL, "/tmp"), CHATXFER_RESULT_NULL_PARAMETER);
  expect("compute_md5(path=NULL)", chatxfer_client_compute_md5(c, NULL), CHATXFER_RESULT_NULL_PARAMETER);
  expect("compute_md5(path=bad utf8)", chatxfer_client_compute_md5(c, bad_utf8), CHATXFER_RESULT_INVALID_UTF8);
  expect("compute_md5(missing)", chatxfer_client_compute_md5(c, "/nonexistent/chatxfer/a.bin"), CHATXFER_RESULT_IO);
  expect("compute_md5(a directory)", chatxfer_client_compute_md5(c, "/tmp"), CHATXFER_RESULT_NOT_A_FILE);

  /* Bad names and paths. */
  expect("add_upload(spec=NULL)", chatxfer_client_add_upload(c, NULL), CHATXFER_RESULT_NULL_PARAMETER);
  memset(&spec, 0, sizeof spec);
  spec.uid = 1;
  spec.hold = true;
  spec.name = "a.bin";
  expect("add_upload(path=NULL)", chatxfer_client_add_upload(c, &spec), CHATXFER_RESULT_NULL_PARAMETER);
  spec.path = "/nonexistent/chatxfer/a.bin";
  expect("add_upload(missing file)", chatxfer_client_add_upload(c, &spec), CHATXFER_RESULT_IO);
  spec.path = "/tmp";
  expect("add_upload(directory)", chatxfer_client_add_upload(c, &spec), CHATXFER_RESULT_NOT_A_FILE);
  spec.path = bad_utf8;
  expect("add_upload(path=bad utf8)", chatxfer_client_add_upload(c, &spec), CHATXFER_RESULT_INVALID_UTF8);
  spec.path = __FILE__;
  spec.name = NULL;
  expect("add_upload(name=NULL)", chatxfer_client_add_upload(c, &spec), CHATXFER_RESULT_NULL_PARAMETER);
  spec.name = bad_utf8;
  expect("add_upload(name=bad utf8)", chatxfer_client_add_upload(c, &spec), CHATXFER_RESULT_INVALID_UTF8);
  spec.name = "../escape";
  expect("add_upload(name=../escape)", chatxfer_client_add_upload(c, &spec), CHATXFER_RESULT_INVALID_NAME);
  spec.name = "a.bin";
  spec.md5 = "not-an-md5";
  expect("add_upload(md5=garbage)", chatxfer_client_add_upload(c, &spec), CHATXFER_RESULT_INVALID_ARGUMENT);
  spec.md5 = bad_utf8;
  expect("add_upload(md5=bad utf8)", chatxfer_client_add_upload(c, &spec), CHATXFER_RESULT_INVALID_UTF8);
  spec.md5 = "";
  /* No message yet (the ChatServer's 1036 gives it): a transfer that would
     start at once is refused, since the deployed server crashes marking
     message 0; a held one waits for its id and cannot start without it. */
  spec.message_id = 0;
  spec.hold = false;
  expect("add_upload(message_id=0)", chatxfer_client_add_upload(c, &spec), CHATXFER_RESULT_INVALID_ARGUMENT);
  spec.hold = true;
  spec.message_id = -3;
  expect("add_upload(message_id<0)", chatxfer_client_add_upload(c, &spec), CHATXFER_RESULT_INVALID_ARGUMENT);
  spec.message_id = 0;
  expect("add_upload(held, id to come)", chatxfer_client_add_upload(c, &spec), CHATXFER_RESULT_OK);
  expect("batch_send without the id", chatxfer_client_batch_send(c, "a.bin"), CHATXFER_RESULT_INVALID_ARGUMENT);
  expect("set_message_id(0)", chatxfer_client_set_message_id(c, "a.bin", 0), CHATXFER_RESULT_INVALID_ARGUMENT);
  expect("set_message_id", chatxfer_client_set_message_id(c, "a.bin", 7), CHATXFER_RESULT_OK);
  expect("add_upload(same name)", chatxfer_client_add_upload(c, &spec), CHATXFER_RESULT_DUPLICATE_NAME);

  /* Downloads: bad specs, then one held (nothing listens, so it stays held). */
  expect("add_download(spec=NULL)", chatxfer_client_add_download(c, NULL), CHATXFER_RESULT_NULL_PARAMETER);
  dl.name = NULL;
  expect("add_download(name=NULL)", chatxfer_client_add_download(c, &dl), CHATXFER_RESULT_NULL_PARAMETER);
  dl.name = bad_utf8;
  expect("add_download(name=bad utf8)", chatxfer_client_add_download(c, &dl), CHATXFER_RESULT_INVALID_UTF8);
  dl.name = "";
  expect("add_download(name=\"\")", chatxfer_client_add_download(c, &dl), CHATXFER_RESULT_INVALID_ARGUMENT);
  dl.name = "d1";
  dl.token = NULL;
  expect("add_download(token=NULL)", chatxfer_client_add_download(c, &dl), CHATXFER_RESULT_NULL_PARAMETER);
  dl.token = bad_utf8;
  expect("add_download(token=bad utf8)", chatxfer_client_add_download(c, &dl), CHATXFER_RESULT_INVALID_UTF8);
  dl.token = "tok";
  dl.dest_dir = NULL;
  expect("add_download(dest_dir=NULL)", chatxfer_client_add_download(c, &dl), CHATXFER_RESULT_NULL_PARAMETER);
  dl.dest_dir = "";
  expect("add_download(dest_dir=\"\")", chatxfer_client_add_download(c, &dl), CHATXFER_RESULT_INVALID_ARGUMENT);
  dl.dest_dir = "/tmp";
  dl.md5 = "not-an-md5";
  expect("add_download(md5=garbage)", chatxfer_client_add_download(c, &dl), CHATXFER_RESULT_INVALID_ARGUMENT);
  dl.md5 = bad_utf8;
  expect("add_download(md5=bad utf8)", chatxfer_client_add_download(c, &dl), CHATXFER_RESULT_INVALID_UTF8);
  dl.md5 = NULL;
  dl.avatar_name = bad_utf8;
  expect("add_download(avatar_name=bad utf8)", chatxfer_client_add_download(c, &dl), CHATXFER_RESULT_INVALID_UTF8);
  dl.avatar_name = "me.png";
  dl.avatar_client_path = bad_utf8;
  expect("add_download(avatar_client_path=bad utf8)", chatxfer_client_add_download(c, &dl),
         CHATXFER_RESULT_INVALID_UTF8);
  dl.avatar_client_path = NULL;
  dl.avatar_name = "../me.png";
  expect("add_download(avatar=../me.png)", chatxfer_client_add_download(c, &dl), CHATXFER_RESULT_INVALID_NAME);
  dl.avatar_name = NULL;
  expect("add_download(held)", chatxfer_client_add_download(c, &dl), CHATXFER_RESULT_OK);
  expect("add_download(same name)", chatxfer_client_add_download(c, &dl), CHATXFER_RESULT_DUPLICATE_NAME);
  dl.name = "a.bin";
  expect("add_download(name of an upload)", chatxfer_client_add_download(c, &dl), CHATXFER_RESULT_DUPLICATE_NAME);
  expect("start_download(name=NULL)", chatxfer_client_start_download(c, NULL), CHATXFER_RESULT_NULL_PARAMETER);
  expect("start_download(bad utf8)", chatxfer_client_start_download(c, bad_utf8), CHATXFER_RESULT_INVALID_UTF8);
  expect("start_download(unknown)", chatxfer_client_start_download(c, "nope"), CHATXFER_RESULT_UNKNOWN_NAME);
  expect("status(held download)", chatxfer_client_status(c, "d1", &st), CHATXFER_RESULT_OK);
  check("held download is paused", st.state == CHATXFER_STATE_PAUSED);
  expect("cancel(held download)", chatxfer_client_cancel(c, "d1"), CHATXFER_RESULT_OK);
  expect("status(cancelled download)", chatxfer_client_status(c, "d1", &st), CHATXFER_RESULT_OK);
  check("cancelled download says so", st.state == CHATXFER_STATE_CANCELLED);
  expect("start_download(cancelled)", chatxfer_client_start_download(c, "d1"), CHATXFER_RESULT_WRONG_STATE);

  expect("pause(name=NULL)", chatxfer_client_pause(c, NULL), CHATXFER_RESULT_NULL_PARAMETER);
  expect("pause(unknown)", chatxfer_client_pause(c, "nope"), CHATXFER_RESULT_UNKNOWN_NAME);
  expect("resume(unknown)", chatxfer_client_resume(c, "nope"), CHATXFER_RESULT_UNKNOWN_NAME);
  expect("batch_send(unknown)", chatxfer_client_batch_send(c, "nope"), CHATXFER_RESULT_UNKNOWN_NAME);
  expect("cancel(unknown)", chatxfer_client_cancel(c, "nope"), CHATXFER_RESULT_UNKNOWN_NAME);
  expect("pause(bad utf8)", chatxfer_client_pause(c, bad_utf8), CHATXFER_RESULT_INVALID_UTF8);
  st.total = 12345;
  expect("status(unknown)", chatxfer_client_status(c, "nope", &st), CHATXFER_RESULT_UNKNOWN_NAME);
  check("status out untouched on failure", st.total == 12345);
  expect("status(out=NULL)", chatxfer_client_status(c, "a.bin", NULL), CHATXFER_RESULT_NULL_PARAMETER);
  expect("status(held)", chatxfer_client_status(c, "a.bin", &st), CHATXFER_RESULT_OK);
  check("held upload is paused", st.state == CHATXFER_STATE_PAUSED);
  /* The md5 is computed on a library thread: the call returned at once. */
  for (int i = 0; i < 1000 && strlen(st.md5) != 32; i++) {
    struct timespec ms10 = {0, 10 * 1000 * 1000};
    nanosleep(&ms10, NULL);
    expect("status(hashing)", chatxfer_client_status(c, "a.bin", &st), CHATXFER_RESULT_OK);
  }
  check("md5 computed", strlen(st.md5) == 32);
  expect("cancel", chatxfer_client_cancel(c, "a.bin"), CHATXFER_RESULT_OK);
  expect("resume(cancelled)", chatxfer_client_resume(c, "a.bin"), CHATXFER_RESULT_WRONG_STATE);

  /* Events come on the library's thread; give them a moment. */
  for (int i = 0; i < 200 && atomic_load(&events) == 0; i++) {
    struct timespec ms10 = {0, 10 * 1000 * 1000};
    nanosleep(&ms10, NULL);
  }
  check("events arrived through the callback", atomic_load(&events) > 0);
  /* "connection down" lines (nothing listens on the ports above). */
  for (int i = 0; i < 1000 && atomic_load(&info_lines) == 0; i++) {
    struct timespec ms10 = {0, 10 * 1000 * 1000};
    nanosleep(&ms10, NULL);
  }
  check("info lines reached the log callback", atomic_load(&info_lines) > 0);
  check("nothing above the log filter", atomic_load(&too_verbose) == 0);
  expect("set_log_callback(NULL)", chatxfer_set_log_callback(NULL, NULL, CHATXFER_LOG_LEVEL_OFF), CHATXFER_RESULT_OK);

  /* Shutdown, twice, and calls after it. */
  expect("shutdown", chatxfer_client_shutdown(c), CHATXFER_RESULT_OK);
  expect("shutdown again", chatxfer_client_shutdown(c), CHATXFER_RESULT_SHUT_DOWN);
  expect("connect after shutdown", chatxfer_client_connect(c, "127.0.0.1", 1), CHATXFER_RESULT_SHUT_DOWN);
  expect("pause after shutdown", chatxfer_client_pause(c, "a.bin"), CHATXFER_RESULT_SHUT_DOWN);
  expect("add_upload after shutdown", chatxfer_client_add_upload(c, &spec), CHATXFER_RESULT_SHUT_DOWN);
  expect("add_download after shutdown", chatxfer_client_add_download(c, &dl), CHATXFER_RESULT_SHUT_DOWN);
  expect("start_download after shutdown", chatxfer_client_start_download(c, "d1"), CHATXFER_RESULT_SHUT_DOWN);
  chatxfer_client_free(c);

  /* After the library is shut down nothing can start again. */
  chatxfer_library_shutdown();
  chatxfer_library_shutdown(); /* twice is harmless */
  c = NULL;
  expect("new after library shutdown", chatxfer_client_new(NULL, NULL, &c), CHATXFER_RESULT_OK);
  expect("connect after library shutdown", chatxfer_client_connect(c, "127.0.0.1", 1), CHATXFER_RESULT_SHUT_DOWN);
  chatxfer_client_free(c);

  printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
