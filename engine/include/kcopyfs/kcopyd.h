/*
 * kcopyd.h: the seed's kcopyd API (Documentation/device-mapper/kcopyd.txt) in userspace form, for C and C++.
 *
 * A client copies sector ranges from one block device to up to 8 others, asynchronously, and calls back once
 * per job with a read error flag and a bitmask of failed destinations. Devices are regular files (images) or
 * block devices, opened with kcopyd_bdev_open. This is a thin facade over the C++ engine (engine/kcopyd.h).
 *
 * Threading: the callbacks of one client run on that client's worker thread, one at a time; they may submit
 * more jobs. kcopyd_client_destroy waits until every job's callback has returned.
 *
 * Return values: 0 on success or a negative errno. On success of kcopyd_copy/kcopyd_zero the callback is
 * always called exactly once, never inside the submitting call; on failure it is not called.
 */
#ifndef KCOPYFS_KCOPYD_H
#define KCOPYFS_KCOPYD_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef uint64_t sector_t; /* 512-byte units */

struct block_device;  /* opaque: an open image file or block device */
struct kcopyd_client; /* opaque */

struct io_region {
  struct block_device* bdev;
  sector_t sector;
  sector_t count;
};

/* Flag bit numbers, as the kernel's: pass (1 << KCOPYD_IGNORE_ERROR). */
#define KCOPYD_IGNORE_ERROR 1 /* keep going after read or write errors */
#define KCOPYD_WRITE_SEQ                                                                                \
  2                     /* write in ascending order, each write after the previous; clears IGNORE_ERROR \
                         */
#define KCOPYD_SPARSE 3 /* kcopyfs extension: skip the source's holes and unmap them at the destinations */

#define KCOPYD_MAX_REGIONS 8

/* read_err: nonzero if the source failed to read; write_err: bit i set if dests[i] failed. */
typedef void (*kcopyd_notify_fn)(int read_err, unsigned int write_err, void* context);

/* Creates a client whose data buffers never exceed num_pages * 4 KiB. Returns 0 and sets *result. */
int kcopyd_client_create(unsigned int num_pages, struct kcopyd_client** result);

/* Copies from->count sectors from *from to each of the num_dests (1..8) regions (their count is not used). */
int kcopyd_copy(struct kcopyd_client* kc, struct io_region* from, unsigned int num_dests,
                struct io_region* dests, unsigned int flags, kcopyd_notify_fn fn, void* context);

/* Zeroes dests[0].count sectors at each of the num_dests regions. */
int kcopyd_zero(struct kcopyd_client* kc, unsigned int num_dests, struct io_region* dests, unsigned int flags,
                kcopyd_notify_fn fn, void* context);

/* Waits for every job of the client, then frees it. */
void kcopyd_client_destroy(struct kcopyd_client* kc);

/* Opens a regular file or a block device. flags: O_RDONLY or O_RDWR, optionally | O_EXCL for an exclusive
 * hold (O_EXCL for block devices, an OFD lock for files). Returns NULL and sets errno on failure. */
struct block_device* kcopyd_bdev_open(const char* path, int flags);
/* Size in sectors. */
sector_t kcopyd_bdev_size(struct block_device* bdev);
/* Makes completed writes durable (fdatasync). Returns 0 or a negative errno. */
int kcopyd_bdev_flush(struct block_device* bdev);
/* Precondition: no job uses bdev. */
void kcopyd_bdev_close(struct block_device* bdev);

#ifdef __cplusplus
}
#endif

#endif /* KCOPYFS_KCOPYD_H */
