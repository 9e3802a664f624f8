/*
 * k3s_fake_clock.c: the wall clock of ONE test machine, as an LD_PRELOAD library installed in
 * that machine's /etc/ld.so.preload by tests/machines/k3s_clock.rs (never in a product image).
 *
 * Machines share the host's kernel clock, so a machine "1 hour behind" needs its own clock:
 * every dynamically linked process in it (systemd, systemd-timedated, firstboot, the K3s double)
 * reads CLOCK_REALTIME as the host's plus the offset in OFFSET_FILE (nanoseconds, text), and
 * clock_settime()/settimeofday() on CLOCK_REALTIME rewrite that offset instead of the kernel
 * clock. So the real systemd-timedated's SetTime steps this machine's clock and nothing else.
 * (Debian's libfaketime 0.9.10 cannot do this: it does not intercept clock_settime.) The host
 * clock stays safe twice over: these calls never reach the kernel, and systemd-nspawn's seccomp
 * filter refuses clock_settime to a container without CAP_SYS_TIME anyway.
 *
 * Built by the test with `cc -shared -fPIC`. Monotonic clocks are untouched.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define OFFSET_FILE "/etc/fake-clock-offset-ns"
#define NS 1000000000LL

static long long offset_ns(void) {
    int fd = open(OFFSET_FILE, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    char buf[32];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    return strtoll(buf, NULL, 10);
}

static long long host_ns(void) {
    struct timespec ts;
    syscall(SYS_clock_gettime, CLOCK_REALTIME, &ts);
    return ts.tv_sec * NS + ts.tv_nsec;
}

static int is_wall(clockid_t c) {
    return c == CLOCK_REALTIME || c == CLOCK_REALTIME_COARSE || c == CLOCK_TAI;
}

int clock_gettime(clockid_t c, struct timespec *ts) {
    int r = syscall(SYS_clock_gettime, c, ts);
    if (r == 0 && is_wall(c)) {
        long long t = ts->tv_sec * NS + ts->tv_nsec + offset_ns();
        ts->tv_sec = t / NS;
        ts->tv_nsec = t % NS;
    }
    return r;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
    (void)tz;
    long long t = host_ns() + offset_ns();
    tv->tv_sec = t / NS;
    tv->tv_usec = (t % NS) / 1000;
    return 0;
}

time_t time(time_t *out) {
    time_t t = (time_t)((host_ns() + offset_ns()) / NS);
    if (out) *out = t;
    return t;
}

/* Makes the machine's clock read `wanted` now: offset = wanted - host clock, written atomically. */
static int set_wall_ns(long long wanted) {
    char path[] = OFFSET_FILE ".XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return -1;
    char buf[32];
    int len = snprintf(buf, sizeof buf, "%lld\n", wanted - host_ns());
    if (write(fd, buf, len) != len || fsync(fd) != 0 || close(fd) != 0 ||
        rename(path, OFFSET_FILE) != 0) {
        unlink(path);
        return -1;
    }
    return 0;
}

int clock_settime(clockid_t c, const struct timespec *ts) {
    if (c != CLOCK_REALTIME) {
        errno = EINVAL;
        return -1;
    }
    return set_wall_ns(ts->tv_sec * NS + ts->tv_nsec);
}

int settimeofday(const struct timeval *tv, const struct timezone *tz) {
    (void)tz;
    if (!tv) return 0;
    return set_wall_ns(tv->tv_sec * NS + tv->tv_usec * 1000LL);
}
