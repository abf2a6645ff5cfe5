// See include/CKVMNet.h. setns(2) is a GNU extension: <sched.h> declares it only with
// _GNU_SOURCE, which Swift's Glibc module does not define, so it lives here.
#define _GNU_SOURCE
#include "CKVMNet.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

int ckvm_enter_netns(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    int rc = setns(fd, CLONE_NEWNET);
    int saved = errno;
    close(fd);
    return rc < 0 ? -saved : 0;
}
