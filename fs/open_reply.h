// Replying to FUSE OPEN with flags that libfuse 3.14's fuse_file_info cannot express.
//
// Why: without FOPEN_PARALLEL_DIRECT_WRITES the kernel takes the inode lock for every direct write, so writes
// to one view are serialized however many threads the daemon has. libfuse 3.14 has no field for it, so the
// reply (struct fuse_open_out) is built here by hand and sent with fuse_reply_iov. The kernel's definitions
// come from <linux/fuse.h>, kept out of every other file because it clashes with libfuse's headers.
#pragma once

#include <cstdint>

#include "fs/fuse_api.h"

namespace kcopyfs::fs {

struct OpenFlags {
  bool direct_io = false;
  bool keep_cache = false;
  bool parallel_direct_writes = false;
};

// Replies to an OPEN request with file handle fh. Returns fuse_reply_iov's result: 0, or a negative errno;
// -ENOENT means the open was interrupted and the kernel dropped it (the caller must undo the open).
int reply_open(fuse_req_t req, uint64_t fh, const OpenFlags& flags);

}  // namespace kcopyfs::fs
