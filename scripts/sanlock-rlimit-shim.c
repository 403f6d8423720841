/* Test machines only: lets sanlock's daemon start in a container without CAP_SYS_RESOURCE.
 *
 * The daemon raises RLIMIT_MEMLOCK at start, unconditionally, and exits when that setrlimit()
 * fails with EPERM ("cannot set the limits for memlock"), which it always does where the
 * capability is missing. Preloaded into the daemon only, this setrlimit() calls the real one and
 * turns an EPERM into success, so the daemon runs with the limits it already has. A real host
 * runs sanlock from its own service and never needs this. scripts/setup-host.sh builds it (gcc)
 * and uses it only when the plain daemon does not start.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sys/resource.h>

int setrlimit(__rlimit_resource_t resource, const struct rlimit *rlim)
{
    int (*real_setrlimit)(__rlimit_resource_t, const struct rlimit *) =
        dlsym(RTLD_NEXT, "setrlimit");
    int rc = real_setrlimit(resource, rlim);

    if (rc != 0 && errno == EPERM) {
        errno = 0;
        return 0;
    }
    return rc;
}
