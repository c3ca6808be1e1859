#include "fs/open_reply.h"

#include <linux/fuse.h>
#include <sys/uio.h>

namespace kcopyfs::fs {

int reply_open(fuse_req_t req, uint64_t fh, const OpenFlags& flags) {
  fuse_open_out out{};
  out.fh = fh;
  if (flags.direct_io) out.open_flags |= FOPEN_DIRECT_IO;
  if (flags.keep_cache) out.open_flags |= FOPEN_KEEP_CACHE;
  if (flags.parallel_direct_writes) out.open_flags |= FOPEN_PARALLEL_DIRECT_WRITES;
  iovec iov{&out, sizeof out};
  return fuse_reply_iov(req, &iov, 1);
}

}  // namespace kcopyfs::fs
