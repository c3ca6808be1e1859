// The C facade of include/kcopyfs/kcopyd.h over KcopydClient and FileDevice.
#include <fcntl.h>

#include <cerrno>
#include <memory>

#include "engine/file_device.h"
#include "engine/kcopyd.h"
#include "engine/sync_io.h"
#include "kcopyfs/kcopyd.h"

struct block_device {
  std::unique_ptr<kcopyfs::FileDevice> device;
};

struct kcopyd_client {
  std::unique_ptr<kcopyfs::KcopydClient> client;
};

namespace {

kcopyfs::CopyFlags to_flags(unsigned int flags) {
  kcopyfs::CopyFlags f;
  f.ignore_error = (flags & (1u << KCOPYD_IGNORE_ERROR)) != 0;
  f.write_seq = (flags & (1u << KCOPYD_WRITE_SEQ)) != 0;
  f.sparse = (flags & (1u << KCOPYD_SPARSE)) != 0;
  return f;
}

bool to_regions(unsigned int n, const io_region* in, kcopyfs::Region* out) {
  if (in == nullptr || n == 0 || n > KCOPYD_MAX_REGIONS) return false;
  for (unsigned i = 0; i < n; ++i) {
    if (in[i].bdev == nullptr) return false;
    out[i] = kcopyfs::Region{in[i].bdev->device.get(), kcopyfs::Sector(in[i].sector),
                             kcopyfs::Sector(in[i].count)};
  }
  return true;
}

int to_rc(const kcopyfs::Status& s) { return s.ok() ? 0 : -s.error().errno_value(); }

}  // namespace

extern "C" {

int kcopyd_client_create(unsigned int num_pages, struct kcopyd_client** result) {
  if (result == nullptr) return -EINVAL;
  kcopyfs::KcopydOptions options;
  options.num_pages = num_pages;
  auto client = kcopyfs::KcopydClient::create(options);
  if (!client) return -client.error().errno_value();
  // Ownership passes to the caller until kcopyd_client_destroy.
  *result = std::make_unique<kcopyd_client>(kcopyd_client{std::move(client).value()}).release();
  return 0;
}

int kcopyd_copy(struct kcopyd_client* kc, struct io_region* from, unsigned int num_dests,
                struct io_region* dests, unsigned int flags, kcopyd_notify_fn fn, void* context) {
  kcopyfs::Region src[1];
  kcopyfs::Region dst[KCOPYD_MAX_REGIONS];
  if (kc == nullptr || fn == nullptr || !to_regions(1, from, src) || !to_regions(num_dests, dests, dst))
    return -EINVAL;
  return to_rc(kc->client->copy(src[0], std::span(dst, num_dests), to_flags(flags),
                                [fn, context](bool r, uint32_t w) { fn(r ? 1 : 0, w, context); }));
}

int kcopyd_zero(struct kcopyd_client* kc, unsigned int num_dests, struct io_region* dests, unsigned int flags,
                kcopyd_notify_fn fn, void* context) {
  kcopyfs::Region dst[KCOPYD_MAX_REGIONS];
  if (kc == nullptr || fn == nullptr || !to_regions(num_dests, dests, dst)) return -EINVAL;
  return to_rc(kc->client->zero(std::span(dst, num_dests), to_flags(flags),
                                [fn, context](bool r, uint32_t w) { fn(r ? 1 : 0, w, context); }));
}

void kcopyd_client_destroy(struct kcopyd_client* kc) { std::unique_ptr<kcopyd_client> owned(kc); }

struct block_device* kcopyd_bdev_open(const char* path, int flags) {
  if (path == nullptr) {
    errno = EINVAL;
    return nullptr;
  }
  kcopyfs::OpenOptions options;
  options.access = (flags & O_ACCMODE) == O_RDONLY ? kcopyfs::Access::read_only : kcopyfs::Access::read_write;
  options.sharing = (flags & O_EXCL) != 0 ? kcopyfs::Sharing::exclusive : kcopyfs::Sharing::none;
  auto dev = kcopyfs::FileDevice::open(path, options);
  if (!dev) {
    errno = dev.error().errno_value();
    return nullptr;
  }
  // Ownership passes to the caller until kcopyd_bdev_close.
  return std::make_unique<block_device>(block_device{std::move(dev).value()}).release();
}

sector_t kcopyd_bdev_size(struct block_device* bdev) {
  return bdev == nullptr ? 0 : bdev->device->size_in_sectors().value();
}

int kcopyd_bdev_flush(struct block_device* bdev) {
  if (bdev == nullptr) return -EINVAL;
  return -kcopyfs::flush_sync(*bdev->device).value();
}

void kcopyd_bdev_close(struct block_device* bdev) { std::unique_ptr<block_device> owned(bdev); }

}  // extern "C"
