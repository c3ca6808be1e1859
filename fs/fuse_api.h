// The one place that selects the libfuse API version (3.14, the low-level API) for fs/.
#pragma once

#ifndef FUSE_USE_VERSION
#define FUSE_USE_VERSION 314
#endif
#include <fuse_lowlevel.h>
