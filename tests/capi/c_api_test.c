/*
 * The C API of <kcopyfs/kcopyd.h>, used from C11 as a kernel-style user would: image files in a temporary
 * directory, kcopyd_bdev_open, a client, copies and zeroes waited for with a condition variable (bounded),
 * and the error returns. Prints a summary; exits non-zero on any failure.
 */
#define _GNU_SOURCE
#include <kcopyfs/kcopyd.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MIB (1024u * 1024u)
#define TIMEOUT_SECONDS 60

static int passed;
static int failed;
static char dir[256];

#define CHECK(cond)                                                                          \
  do {                                                                                       \
    if (cond) {                                                                              \
      ++passed;                                                                              \
    } else {                                                                                 \
      ++failed;                                                                              \
      fprintf(stderr, "%s:%d: %s: check failed: %s\n", __FILE__, __LINE__, __func__, #cond); \
    }                                                                                        \
  } while (0)

/* --- files -------------------------------------------------------------------------------------------------
 */

static void path_of(char* out, size_t size, const char* name) { snprintf(out, size, "%s/%s", dir, name); }

static unsigned char pattern_byte(unsigned seed, uint64_t offset) {
  uint64_t x = (offset / 8 + 1) * 0x9E3779B97F4A7C15ull ^ (seed + 1) * 0xC2B2AE3D27D4EB4Full;
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  return (unsigned char)(x >> ((offset % 8) * 8));
}

/* Creates name with size bytes: the pattern of seed, or zeros when seed is 0. Returns 0 on success. */
static int make_file(const char* name, uint64_t size, unsigned seed) {
  char path[512];
  path_of(path, sizeof path, name);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return -1;
  unsigned char* buf = malloc(MIB);
  int rc = buf == NULL ? -1 : 0;
  for (uint64_t off = 0; rc == 0 && off < size; off += MIB) {
    size_t n = size - off < MIB ? (size_t)(size - off) : MIB;
    for (size_t i = 0; i < n; ++i) buf[i] = seed == 0 ? 0 : pattern_byte(seed, off + i);
    if (pwrite(fd, buf, n, (off_t)off) != (ssize_t)n) rc = -1;
  }
  free(buf);
  if (close(fd) != 0) rc = -1;
  return rc;
}

/* 1 when name's bytes [offset, offset+length) are the pattern of seed starting at pattern_offset (zeros when
 * seed is 0). */
static int file_has(const char* name, uint64_t offset, uint64_t length, unsigned seed,
                    uint64_t pattern_offset) {
  char path[512];
  path_of(path, sizeof path, name);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  unsigned char* buf = malloc(length > 0 ? length : 1);
  int ok = buf != NULL && pread(fd, buf, length, (off_t)offset) == (ssize_t)length;
  for (uint64_t i = 0; ok && i < length; ++i) {
    unsigned char want = seed == 0 ? 0 : pattern_byte(seed, pattern_offset + i);
    if (buf[i] != want) {
      fprintf(stderr, "%s: byte %llu is %u, expected %u\n", name, (unsigned long long)(offset + i), buf[i],
              want);
      ok = 0;
    }
  }
  free(buf);
  close(fd);
  return ok;
}

static struct block_device* open_dev(const char* name, int flags) {
  char path[512];
  path_of(path, sizeof path, name);
  return kcopyd_bdev_open(path, flags);
}

/* --- waiting for callbacks --------------------------------------------------------------------------------
 */

struct waiter {
  pthread_mutex_t mutex;
  pthread_cond_t cond;
  int calls;
  int read_err;
  unsigned int write_err;
  pthread_t caller;
  int on_caller_thread;
};

static void waiter_init(struct waiter* w) {
  pthread_condattr_t attr;
  pthread_condattr_init(&attr);
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  pthread_mutex_init(&w->mutex, NULL);
  pthread_cond_init(&w->cond, &attr);
  pthread_condattr_destroy(&attr);
  w->calls = 0;
  w->read_err = -1;
  w->write_err = ~0u;
  w->caller = pthread_self();
  w->on_caller_thread = 0;
}

static void waiter_destroy(struct waiter* w) {
  pthread_cond_destroy(&w->cond);
  pthread_mutex_destroy(&w->mutex);
}

static void notify(int read_err, unsigned int write_err, void* context) {
  struct waiter* w = context;
  pthread_mutex_lock(&w->mutex);
  ++w->calls;
  w->read_err = read_err;
  w->write_err = write_err;
  if (pthread_equal(pthread_self(), w->caller)) w->on_caller_thread = 1;
  pthread_cond_signal(&w->cond);
  pthread_mutex_unlock(&w->mutex);
}

/* Waits until the callback ran, at most TIMEOUT_SECONDS. Returns 1 if it ran. */
static int waiter_wait(struct waiter* w) {
  struct timespec deadline;
  clock_gettime(CLOCK_MONOTONIC, &deadline);
  deadline.tv_sec += TIMEOUT_SECONDS;
  pthread_mutex_lock(&w->mutex);
  int rc = 0;
  while (w->calls == 0 && rc == 0) rc = pthread_cond_timedwait(&w->cond, &w->mutex, &deadline);
  int called = w->calls > 0;
  pthread_mutex_unlock(&w->mutex);
  return called;
}

static int waiter_calls(struct waiter* w) {
  pthread_mutex_lock(&w->mutex);
  int calls = w->calls;
  pthread_mutex_unlock(&w->mutex);
  return calls;
}

/* --- tests
 * --------------------------------------------------------------------------------------------------- */

/* One source to two destinations at different offsets, with IGNORE_ERROR; then kcopyd_zero of both. */
static void test_copy_and_zero(void) {
  const uint64_t size = 4 * MIB;
  CHECK(make_file("src", size, 1) == 0);
  CHECK(make_file("d1", size, 2) == 0);
  CHECK(make_file("d2", size, 3) == 0);
  struct block_device* src = open_dev("src", O_RDWR | O_EXCL);
  struct block_device* d1 = open_dev("d1", O_RDWR | O_EXCL);
  struct block_device* d2 = open_dev("d2", O_RDWR | O_EXCL);
  CHECK(src != NULL && d1 != NULL && d2 != NULL);
  if (src == NULL || d1 == NULL || d2 == NULL) goto out;
  CHECK(kcopyd_bdev_size(src) == size / 512);

  struct kcopyd_client* kc = NULL;
  CHECK(kcopyd_client_create(64, &kc) == 0 && kc != NULL); /* 256 KiB of buffers: the copy runs in pieces */
  if (kc == NULL) goto out;

  /* 2 MiB + 512 from source sector 8 to d1 sector 0 and d2 sector 1000. */
  const sector_t count = 4097;
  struct io_region from = {src, 8, count};
  struct io_region dests[2] = {{d1, 0, 0}, {d2, 1000, 0}};
  struct waiter w;
  waiter_init(&w);
  CHECK(kcopyd_copy(kc, &from, 2, dests, 1u << KCOPYD_IGNORE_ERROR, notify, &w) == 0);
  CHECK(waiter_wait(&w));
  CHECK(w.read_err == 0);
  CHECK(w.write_err == 0);
  CHECK(w.calls == 1);
  CHECK(!w.on_caller_thread);
  waiter_destroy(&w);
  CHECK(kcopyd_bdev_flush(d1) == 0);
  CHECK(kcopyd_bdev_flush(d2) == 0);

  const uint64_t len = count * 512;
  CHECK(file_has("d1", 0, len, 1, 8 * 512));
  CHECK(file_has("d1", len, size - len, 2, len));
  CHECK(file_has("d2", 0, 1000 * 512, 3, 0));
  CHECK(file_has("d2", 1000 * 512, len, 1, 8 * 512));
  CHECK(file_has("d2", 1000 * 512 + len, size - 1000 * 512 - len, 3, 1000 * 512 + len));

  /* Zero 1 MiB at sector 16 of d1 and sector 2048 of d2 (one count for all destinations, as the kernel). */
  struct io_region zdests[2] = {{d1, 16, 2048}, {d2, 2048, 2048}};
  waiter_init(&w);
  CHECK(kcopyd_zero(kc, 2, zdests, 0, notify, &w) == 0);
  CHECK(waiter_wait(&w));
  CHECK(w.read_err == 0);
  CHECK(w.write_err == 0);
  waiter_destroy(&w);
  CHECK(kcopyd_bdev_flush(d1) == 0);
  CHECK(kcopyd_bdev_flush(d2) == 0);
  CHECK(file_has("d1", 0, 16 * 512, 1, 8 * 512));
  CHECK(file_has("d1", 16 * 512, MIB, 0, 0));
  CHECK(file_has("d1", 16 * 512 + MIB, len - 16 * 512 - MIB, 1, 8 * 512 + 16 * 512 + MIB));
  CHECK(file_has("d2", 1000 * 512, 1048 * 512, 1, 8 * 512));
  CHECK(file_has("d2", 2048 * 512, MIB, 0, 0));
  CHECK(file_has("d2", 2 * MIB, 1000 * 512 + len - 2 * MIB, 1, 8 * 512 + 2 * MIB - 1000 * 512));
  CHECK(file_has("d2", 3 * MIB, MIB, 3, 3 * MIB));
  CHECK(file_has("src", 0, size, 1, 0)); /* the source never changes */

  kcopyd_client_destroy(kc);
out:
  if (src != NULL) kcopyd_bdev_close(src);
  if (d1 != NULL) kcopyd_bdev_close(d1);
  if (d2 != NULL) kcopyd_bdev_close(d2);
}

/* A zero-length copy calls back with (0, 0); 0 or 9 destinations are refused with -EINVAL and never call
 * back. */
static void test_edge_cases(void) {
  CHECK(make_file("e_src", MIB, 4) == 0);
  CHECK(make_file("e_dst", MIB, 5) == 0);
  struct block_device* src = open_dev("e_src", O_RDONLY);
  struct block_device* dst = open_dev("e_dst", O_RDWR | O_EXCL);
  CHECK(src != NULL && dst != NULL);
  if (src == NULL || dst == NULL) goto out;
  struct kcopyd_client* kc = NULL;
  CHECK(kcopyd_client_create(256, &kc) == 0 && kc != NULL);
  if (kc == NULL) goto out;

  struct waiter empty;
  waiter_init(&empty);
  struct io_region from0 = {src, 0, 0};
  struct io_region to0 = {dst, 0, 0};
  CHECK(kcopyd_copy(kc, &from0, 1, &to0, 0, notify, &empty) == 0);
  CHECK(waiter_wait(&empty));
  CHECK(empty.read_err == 0);
  CHECK(empty.write_err == 0);
  CHECK(!empty.on_caller_thread);

  struct waiter refused;
  waiter_init(&refused);
  struct io_region from = {src, 0, 8};
  struct io_region nine[9];
  for (int i = 0; i < 9; ++i) {
    nine[i].bdev = dst;
    nine[i].sector = (sector_t)i * 8;
    nine[i].count = 8;
  }
  CHECK(kcopyd_copy(kc, &from, 0, nine, 0, notify, &refused) == -EINVAL);
  CHECK(kcopyd_copy(kc, &from, 9, nine, 0, notify, &refused) == -EINVAL);
  CHECK(kcopyd_zero(kc, 0, nine, 0, notify, &refused) == -EINVAL);
  CHECK(kcopyd_zero(kc, 9, nine, 0, notify, &refused) == -EINVAL);
  /* Beyond the end of the destination, and a read-only destination. */
  struct io_region past_end = {dst, kcopyd_bdev_size(dst) - 4, 0};
  CHECK(kcopyd_copy(kc, &from, 1, &past_end, 0, notify, &refused) == -EINVAL);
  struct io_region to_read_only = {src, 0, 0};
  CHECK(kcopyd_copy(kc, &from, 1, &to_read_only, 0, notify, &refused) < 0);

  kcopyd_client_destroy(kc); /* waits for every job: a refused job's callback would have run by now */
  CHECK(waiter_calls(&refused) == 0);
  CHECK(waiter_calls(&empty) == 1);
  CHECK(file_has("e_dst", 0, MIB, 5, 0));
  waiter_destroy(&empty);
  waiter_destroy(&refused);
out:
  if (src != NULL) kcopyd_bdev_close(src);
  if (dst != NULL) kcopyd_bdev_close(dst);
}

/* kcopyd_bdev_open errors: a missing path (ENOENT) and a file already held exclusively (EBUSY). */
static void test_open_errors(void) {
  errno = 0;
  CHECK(open_dev("no-such-file", O_RDWR | O_EXCL) == NULL);
  CHECK(errno == ENOENT);

  CHECK(make_file("held", MIB, 6) == 0);
  struct block_device* first = open_dev("held", O_RDWR | O_EXCL);
  CHECK(first != NULL);
  errno = 0;
  struct block_device* second = open_dev("held", O_RDWR | O_EXCL);
  CHECK(second == NULL);
  CHECK(errno == EBUSY);
  if (second != NULL) kcopyd_bdev_close(second);
  if (first != NULL) kcopyd_bdev_close(first);
  /* Released on close: it opens again. */
  struct block_device* again = open_dev("held", O_RDWR | O_EXCL);
  CHECK(again != NULL);
  if (again != NULL) kcopyd_bdev_close(again);

  CHECK(make_file("odd", 1000, 7) == 0);
  errno = 0;
  CHECK(open_dev("odd", O_RDONLY) == NULL); /* not a multiple of 512 */
  CHECK(errno == EINVAL);
}

/* kcopyd_client_destroy returns only after every job's callback: destroy right after submitting two jobs. */
static void test_destroy_waits(void) {
  const uint64_t size = 16 * MIB;
  CHECK(make_file("w_src", size, 8) == 0);
  CHECK(make_file("w_d1", size, 0) == 0);
  CHECK(make_file("w_d2", size, 0) == 0);
  struct block_device* src = open_dev("w_src", O_RDONLY | O_EXCL);
  struct block_device* d1 = open_dev("w_d1", O_RDWR | O_EXCL);
  struct block_device* d2 = open_dev("w_d2", O_RDWR | O_EXCL);
  CHECK(src != NULL && d1 != NULL && d2 != NULL);
  if (src == NULL || d1 == NULL || d2 == NULL) goto out;
  struct kcopyd_client* kc = NULL;
  CHECK(kcopyd_client_create(16, &kc) == 0 && kc != NULL); /* 64 KiB pieces: 128 of them per job */
  if (kc == NULL) goto out;
  struct waiter w1, w2;
  waiter_init(&w1);
  waiter_init(&w2);
  const sector_t half = size / 512 / 2;
  struct io_region from1 = {src, 0, half};
  struct io_region from2 = {src, half, half};
  struct io_region to1[2] = {{d1, 0, 0}, {d2, 0, 0}};
  struct io_region to2[2] = {{d1, half, 0}, {d2, half, 0}};
  CHECK(kcopyd_copy(kc, &from1, 2, to1, 0, notify, &w1) == 0);
  CHECK(kcopyd_copy(kc, &from2, 2, to2, 0, notify, &w2) == 0);
  kcopyd_client_destroy(kc);
  CHECK(waiter_calls(&w1) == 1);
  CHECK(waiter_calls(&w2) == 1);
  CHECK(w1.read_err == 0 && w1.write_err == 0);
  CHECK(w2.read_err == 0 && w2.write_err == 0);
  waiter_destroy(&w1);
  waiter_destroy(&w2);
  CHECK(kcopyd_bdev_flush(d1) == 0);
  CHECK(kcopyd_bdev_flush(d2) == 0);
  CHECK(file_has("w_d1", 0, size, 8, 0));
  CHECK(file_has("w_d2", 0, size, 8, 0));
out:
  if (src != NULL) kcopyd_bdev_close(src);
  if (d1 != NULL) kcopyd_bdev_close(d1);
  if (d2 != NULL) kcopyd_bdev_close(d2);
}

static void remove_dir(void) {
  static const char* names[] = {"src", "d1", "d2", "e_src", "e_dst", "held", "odd", "w_src", "w_d1", "w_d2"};
  char path[512];
  for (size_t i = 0; i < sizeof names / sizeof names[0]; ++i) {
    path_of(path, sizeof path, names[i]);
    unlink(path);
  }
  rmdir(dir);
}

int main(void) {
  const char* tmp = getenv("TMPDIR");
  snprintf(dir, sizeof dir, "%s/kcopyfs-capi.XXXXXX", tmp != NULL ? tmp : "/var/tmp");
  if (mkdtemp(dir) == NULL) {
    perror("mkdtemp");
    return 2;
  }
  test_copy_and_zero();
  test_edge_cases();
  test_open_errors();
  test_destroy_waits();
  remove_dir();
  printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
