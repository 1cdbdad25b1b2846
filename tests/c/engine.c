/* The C ABI's sans-IO engine (chatxfer_engine_*) over a socket this program
 * owns, the way a host like FileTcpMgr would drive it: uploads FILE as
 * message 5, downloads message 5 back into DEST_DIR, and compares the bytes;
 * then the engine's bad calls (NULL, bad UTF-8, unknown names, a malformed
 * frame), which must give error results and leave out-parameters alone.
 *
 *   engine HOST PORT FILE DEST_DIR
 *
 * The server is the positional reference server (`chatxfer serve`). Every
 * wait is poll(2) on the socket, bounded by the engine's timer and an
 * overall 60 s deadline. Prints "saved PATH" and "N passed, M failed";
 * exits 0 only if M == 0. Built with -Wall -Wextra -Wpedantic -Werror by
 * cpp-example/CMakeLists.txt; run by tools/tests/cpp.rs. */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "chatxfer.h"
#include "expect.h"

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int connect_to(const char *host, int port) {
  struct sockaddr_in a;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  if (inet_pton(AF_INET, host, &a.sin_addr) != 1 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    close(fd);
    return -1;
  }
  /* Non-blocking: never stuck in a write while the server waits for us to
     read (downloads send small requests and receive big chunks). */
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  return fd;
}

/* What the loop saw of the transfer it waits for. */
struct outcome {
  int completed, failed;
  char saved[4096];
};

/* Drives the engine over fd until transfer `name` completes or fails, or
 * the deadline passes. Returns 0 on completion. */
static int drive(chatxfer_engine *e, int fd, const char *name, struct outcome *o) {
  static unsigned char out[64 * 1024], in[64 * 1024];
  size_t out_len = 0, out_at = 0;
  double deadline = now_s() + 60;
  memset(o, 0, sizeof *o);
  while (!o->completed && !o->failed) {
    chatxfer_event ev;
    bool got = false;
    int64_t wait_ms = -1;
    struct pollfd p;
    if (now_s() > deadline) {
      printf("FAIL %s: no outcome within 60 s\n", name);
      return -1;
    }
    if (out_at == out_len) {
      out_at = out_len = 0;
      if (chatxfer_engine_poll_transmit(e, out, sizeof out, &out_len) != CHATXFER_RESULT_OK) return -1;
    }
    if (chatxfer_engine_next_timeout_ms(e, &wait_ms) != CHATXFER_RESULT_OK) return -1;
    /* Bounded so the deadline is checked; the engine's timer if sooner. */
    if (wait_ms < 0 || wait_ms > 500) wait_ms = 500;
    p.fd = fd;
    p.events = POLLIN | (out_at < out_len ? POLLOUT : 0);
    p.revents = 0;
    if (poll(&p, 1, (int)wait_ms) < 0 && errno != EINTR) return -1;
    if (p.revents & POLLOUT) {
      ssize_t n = send(fd, out + out_at, out_len - out_at, MSG_NOSIGNAL);
      if (n > 0) out_at += (size_t)n;
      else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return -1;
    }
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t n = recv(fd, in, sizeof in, 0);
      if (n == 0) {
        printf("FAIL %s: the server closed the connection\n", name);
        return -1;
      }
      if (n > 0 && chatxfer_engine_handle_bytes(e, in, (size_t)n) != CHATXFER_RESULT_OK) return -1;
      if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return -1;
    }
    if (chatxfer_engine_next_timeout_ms(e, &wait_ms) == CHATXFER_RESULT_OK && wait_ms == 0)
      chatxfer_engine_handle_timeout(e);
    while (chatxfer_engine_poll_event(e, &ev, &got) == CHATXFER_RESULT_OK && got) {
      if (strcmp(ev.name, name) != 0) continue;
      if (ev.kind == CHATXFER_EVENT_KIND_SAVED) snprintf(o->saved, sizeof o->saved, "%s", ev.path);
      if (ev.kind == CHATXFER_EVENT_KIND_COMPLETED) o->completed = 1;
      if (ev.kind == CHATXFER_EVENT_KIND_FAILED) {
        printf("FAIL %s: failed with %lld: %s\n", name, (long long)ev.code, ev.message);
        o->failed = 1;
      }
    }
  }
  return o->completed ? 0 : -1;
}

/* The whole file, or NULL; *len its size. */
static unsigned char *read_all(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  unsigned char *buf = NULL;
  long n;
  if (!f) return NULL;
  if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
    buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
      free(buf);
      buf = NULL;
    }
    *len = (size_t)n;
  }
  fclose(f);
  return buf;
}

static void transfer(const char *host, int port, const char *file, const char *dest) {
  chatxfer_engine *e = NULL;
  chatxfer_upload_spec up;
  chatxfer_download_spec dl;
  chatxfer_file_status st;
  struct outcome o;
  size_t a_len = 0, b_len = 0;
  unsigned char *a, *b;
  int fd = connect_to(host, port);
  check("connect to the server", fd >= 0);
  if (fd < 0) return;
  expect("engine_new", chatxfer_engine_new(false, &e), CHATXFER_RESULT_OK);
  if (!e) return;
  expect("engine_connected", chatxfer_engine_connected(e), CHATXFER_RESULT_OK);

  memset(&up, 0, sizeof up);
  up.path = file;
  up.name = "c-engine.bin";
  up.uid = 1001;
  up.sender = 1001;
  up.receiver = 1002;
  up.message_id = 5;
  up.hold = true;
  expect("engine_add_upload", chatxfer_engine_add_upload(e, &up), CHATXFER_RESULT_OK);
  expect("engine_add_upload again", chatxfer_engine_add_upload(e, &up), CHATXFER_RESULT_DUPLICATE_NAME);
  expect("engine_batch_send", chatxfer_engine_batch_send(e, "c-engine.bin"), CHATXFER_RESULT_OK);
  check("upload completes", drive(e, fd, "c-engine.bin", &o) == 0);

  memset(&dl, 0, sizeof dl);
  dl.name = "c-dl";
  dl.message_id = 5;
  dl.uid = 1002;
  dl.token = "";
  dl.dest_dir = dest;
  expect("engine_add_download", chatxfer_engine_add_download(e, &dl), CHATXFER_RESULT_OK);
  expect("engine_status(held download)", chatxfer_engine_status(e, "c-dl", &st), CHATXFER_RESULT_OK);
  check("a held download is PAUSED", st.state == CHATXFER_STATE_PAUSED);
  expect("engine_start_download", chatxfer_engine_start_download(e, "c-dl"), CHATXFER_RESULT_OK);
  check("download completes", drive(e, fd, "c-dl", &o) == 0);
  check("SAVED carried a path", o.saved[0] != 0);
  printf("saved %s\n", o.saved);

  a = read_all(file, &a_len);
  b = o.saved[0] ? read_all(o.saved, &b_len) : NULL;
  check("the downloaded copy is byte-identical",
        a && b && a_len == b_len && memcmp(a, b, a_len) == 0);
  expect("engine_status(done)", chatxfer_engine_status(e, "c-dl", &st), CHATXFER_RESULT_OK);
  check("status COMPLETED with the size", st.state == CHATXFER_STATE_COMPLETED && st.total == a_len);
  free(a);
  free(b);
  expect("engine_connection_lost", chatxfer_engine_connection_lost(e), CHATXFER_RESULT_OK);
  close(fd);
  chatxfer_engine_free(e);
}

static void bad_calls(const char *dest) {
  const char *bad_utf8 = "caf\xc3\x28.png"; /* 0xC3 0x28: not UTF-8 */
  /* A header announcing a body far beyond the limit. */
  const unsigned char bad_frame[] = {0x04, 0x12, 0xff, 0xff, 0xff, 0xff};
  chatxfer_engine *e = NULL;
  chatxfer_upload_spec up;
  chatxfer_download_spec dl;
  chatxfer_file_status st;
  chatxfer_event ev;
  unsigned char buf[16];
  size_t len = 777;
  int64_t ms = 777;
  bool got = true, idle = false;
  char msg[256];

  expect("engine_new(out=NULL)", chatxfer_engine_new(false, NULL), CHATXFER_RESULT_NULL_PARAMETER);
  expect("engine_add_upload(NULL)", chatxfer_engine_add_upload(NULL, NULL), CHATXFER_RESULT_NULL_PARAMETER);
  expect("engine_add_download(NULL)", chatxfer_engine_add_download(NULL, NULL), CHATXFER_RESULT_NULL_PARAMETER);
  expect("engine_batch_send(NULL)", chatxfer_engine_batch_send(NULL, "x"), CHATXFER_RESULT_NULL_PARAMETER);
  expect("engine_start_download(NULL)", chatxfer_engine_start_download(NULL, "x"), CHATXFER_RESULT_NULL_PARAMETER);
  expect("engine_pause(NULL)", chatxfer_engine_pause(NULL, "x"), CHATXFER_RESULT_NULL_PARAMETER);
  expect("engine_resume(NULL)", chatxfer_engine_resume(NULL, "x"), CHATXFER_RESULT_NULL_PARAMETER);
  expect("engine_cancel(NULL)", chatxfer_engine_cancel(NULL, "x"), CHATXFER_RESULT_NULL_PARAMETER);
  expect("engine_retry(NULL)", chatxfer_engine_retry(NULL, "x"), CHATXFER_RESULT_NULL_PARAMETER);
  expect("engine_set_message_id(NULL)", chatxfer_engine_set_message_id(NULL, "x", 5), CHATXFER_RESULT_NULL_PARAMETER);
  expect("engine_status(NULL)", chatxfer_engine_status(NULL, "x", &st), CHATXFER_RESULT_NULL_PARAMETER);
  expect("engine_connected(NULL)", chatxfer_engine_connected(NULL), CHATXFER_RESULT_NULL_PARAMETER);
  expect("engine_connection_lost(NULL)", chatxfer_engine_connection_lost(NULL), CHATXFER_RESULT_NULL_PARAMETER);
  expect("engine_poll_transmit(NULL)", chatxfer_engine_poll_transmit(NULL, buf, sizeof buf, &len),
         CHATXFER_RESULT_NULL_PARAMETER);
  expect("engine_handle_bytes(NULL)", chatxfer_engine_handle_bytes(NULL, buf, 1), CHATXFER_RESULT_NULL_PARAMETER);
  expect("engine_next_timeout_ms(NULL)", chatxfer_engine_next_timeout_ms(NULL, &ms), CHATXFER_RESULT_NULL_PARAMETER);
  expect("engine_handle_timeout(NULL)", chatxfer_engine_handle_timeout(NULL), CHATXFER_RESULT_NULL_PARAMETER);
  expect("engine_poll_event(NULL)", chatxfer_engine_poll_event(NULL, &ev, &got), CHATXFER_RESULT_NULL_PARAMETER);
  expect("engine_is_idle(NULL)", chatxfer_engine_is_idle(NULL, &idle), CHATXFER_RESULT_NULL_PARAMETER);
  chatxfer_engine_free(NULL); /* allowed */
  check("last_error names the NULL", chatxfer_last_error(msg, sizeof msg) > 0 && strstr(msg, "NULL") != NULL);

  expect("engine_new", chatxfer_engine_new(true, &e), CHATXFER_RESULT_OK);
  if (!e) return;
  /* NULL out-parameters and arguments on a live engine. */
  expect("poll_transmit(buf=NULL)", chatxfer_engine_poll_transmit(e, NULL, 16, &len), CHATXFER_RESULT_NULL_PARAMETER);
  expect("poll_transmit(out_len=NULL)", chatxfer_engine_poll_transmit(e, buf, sizeof buf, NULL),
         CHATXFER_RESULT_NULL_PARAMETER);
  check("out_len untouched on failure", len == 777);
  expect("handle_bytes(data=NULL)", chatxfer_engine_handle_bytes(e, NULL, 4), CHATXFER_RESULT_NULL_PARAMETER);
  expect("next_timeout_ms(out=NULL)", chatxfer_engine_next_timeout_ms(e, NULL), CHATXFER_RESULT_NULL_PARAMETER);
  check("out_ms untouched on failure", ms == 777);
  expect("poll_event(out=NULL)", chatxfer_engine_poll_event(e, NULL, &got), CHATXFER_RESULT_NULL_PARAMETER);
  expect("poll_event(out_got=NULL)", chatxfer_engine_poll_event(e, &ev, NULL), CHATXFER_RESULT_NULL_PARAMETER);
  check("out_got untouched on failure", got);
  expect("is_idle(out=NULL)", chatxfer_engine_is_idle(e, NULL), CHATXFER_RESULT_NULL_PARAMETER);
  expect("add_upload(spec=NULL)", chatxfer_engine_add_upload(e, NULL), CHATXFER_RESULT_NULL_PARAMETER);
  expect("add_download(spec=NULL)", chatxfer_engine_add_download(e, NULL), CHATXFER_RESULT_NULL_PARAMETER);
  expect("pause(name=NULL)", chatxfer_engine_pause(e, NULL), CHATXFER_RESULT_NULL_PARAMETER);
  expect("status(out=NULL)", chatxfer_engine_status(e, "x", NULL), CHATXFER_RESULT_NULL_PARAMETER);

  /* Unknown names and bad strings. */
  st.total = 777;
  expect("status(unknown)", chatxfer_engine_status(e, "nope", &st), CHATXFER_RESULT_UNKNOWN_NAME);
  check("status out untouched on failure", st.total == 777);
  expect("start_download(unknown)", chatxfer_engine_start_download(e, "nope"), CHATXFER_RESULT_UNKNOWN_NAME);
  expect("batch_send(unknown)", chatxfer_engine_batch_send(e, "nope"), CHATXFER_RESULT_UNKNOWN_NAME);
  expect("pause(unknown)", chatxfer_engine_pause(e, "nope"), CHATXFER_RESULT_UNKNOWN_NAME);
  expect("cancel(unknown)", chatxfer_engine_cancel(e, "nope"), CHATXFER_RESULT_UNKNOWN_NAME);
  expect("retry(unknown)", chatxfer_engine_retry(e, "nope"), CHATXFER_RESULT_UNKNOWN_NAME);
  expect("set_message_id(unknown)", chatxfer_engine_set_message_id(e, "nope", 5), CHATXFER_RESULT_UNKNOWN_NAME);
  expect("pause(bad UTF-8)", chatxfer_engine_pause(e, bad_utf8), CHATXFER_RESULT_INVALID_UTF8);
  memset(&up, 0, sizeof up);
  up.path = "/nonexistent/chatxfer-test";
  up.name = "u";
  up.message_id = 1;
  expect("add_upload(missing file)", chatxfer_engine_add_upload(e, &up), CHATXFER_RESULT_IO);
  up.name = NULL;
  expect("add_upload(name=NULL)", chatxfer_engine_add_upload(e, &up), CHATXFER_RESULT_NULL_PARAMETER);
  memset(&dl, 0, sizeof dl);
  dl.name = bad_utf8;
  dl.message_id = 5;
  dl.token = "";
  dl.dest_dir = dest;
  expect("add_download(bad UTF-8 name)", chatxfer_engine_add_download(e, &dl), CHATXFER_RESULT_INVALID_UTF8);
  dl.name = "d";
  dl.dest_dir = "/nonexistent/chatxfer-test";
  expect("add_download(missing dir)", chatxfer_engine_add_download(e, &dl), CHATXFER_RESULT_INVALID_ARGUMENT);
  dl.dest_dir = dest;
  dl.md5 = "xyz";
  expect("add_download(bad md5)", chatxfer_engine_add_download(e, &dl), CHATXFER_RESULT_INVALID_ARGUMENT);
  dl.md5 = NULL;
  dl.name = "../d";
  expect("add_download(path as name)", chatxfer_engine_add_download(e, &dl), CHATXFER_RESULT_INVALID_NAME);

  /* A held download asks nothing of the server; cancelled, it cannot start. */
  dl.name = "d";
  expect("add_download", chatxfer_engine_add_download(e, &dl), CHATXFER_RESULT_OK);
  expect("retry(held)", chatxfer_engine_retry(e, "d"), CHATXFER_RESULT_WRONG_STATE);
  expect("connected", chatxfer_engine_connected(e), CHATXFER_RESULT_OK);
  expect("poll_transmit(held)", chatxfer_engine_poll_transmit(e, buf, sizeof buf, &len), CHATXFER_RESULT_OK);
  check("held: nothing to send", len == 0);
  expect("cancel", chatxfer_engine_cancel(e, "d"), CHATXFER_RESULT_OK);
  expect("start_download(cancelled)", chatxfer_engine_start_download(e, "d"), CHATXFER_RESULT_WRONG_STATE);
  expect("is_idle", chatxfer_engine_is_idle(e, &idle), CHATXFER_RESULT_OK);
  check("idle after the cancel", idle);
  /* Events so far: the download's state changes, strings never NULL. */
  {
    int n = 0, ok = 1;
    while (chatxfer_engine_poll_event(e, &ev, &got) == CHATXFER_RESULT_OK && got) {
      n++;
      ok = ok && ev.name && ev.md5 && ev.message && ev.path && strcmp(ev.name, "d") == 0;
    }
    check("state events of d, with non-NULL strings", n > 0 && ok);
    check("poll_event says none at the end", !got);
  }
  /* Cancelled, it can start over under its name (and be cancelled again). */
  expect("retry(cancelled)", chatxfer_engine_retry(e, "d"), CHATXFER_RESULT_OK);
  expect("is_idle after retry", chatxfer_engine_is_idle(e, &idle), CHATXFER_RESULT_OK);
  check("busy after the retry", !idle);
  expect("cancel again", chatxfer_engine_cancel(e, "d"), CHATXFER_RESULT_OK);
  expect("handle_bytes(malformed header)", chatxfer_engine_handle_bytes(e, bad_frame, sizeof bad_frame),
         CHATXFER_RESULT_BAD_FRAME);
  expect("connection_lost after BAD_FRAME", chatxfer_engine_connection_lost(e), CHATXFER_RESULT_OK);
  expect("handle_bytes(len 0)", chatxfer_engine_handle_bytes(e, buf, 0), CHATXFER_RESULT_OK);
  chatxfer_engine_free(e);
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: %s HOST PORT FILE DEST_DIR\n", argv[0]);
    return 2;
  }
  transfer(argv[1], atoi(argv[2]), argv[3], argv[4]);
  bad_calls(argv[4]);
  printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
