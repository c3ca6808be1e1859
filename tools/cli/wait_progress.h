// --wait of merge and resync: polls the daemon's status and shows the progress (tools/cli/progress.h) until
// the work is done.
#pragma once

#include <string>

namespace kcopyfs::cli {

// Until the merge of snapshot name is done (the snapshot is gone from the status). Result: the exit code;
// a failed merge or a daemon that went away is printed as "kcopyfs: VERB: ..." (1).
int wait_for_merge(const std::string& verb, const std::string& mountpoint, const std::string& name);

// Until every region of mirror name is in sync. Result: the exit code; a resync that stopped short (a dead
// leg, a failed target) or a daemon that went away is printed as "kcopyfs: VERB: ..." (1).
int wait_for_resync(const std::string& verb, const std::string& mountpoint, const std::string& name);

}  // namespace kcopyfs::cli
