# cython: language_level=3
"""The host side of mmemu: real memory of this process, touched by compiled code.

Every access and every system call whose faults are counted runs here, in C, between two reads
of this thread's fault counter (getrusage(RUSAGE_THREAD)), so nothing Python does can fault
inside a measured window.  An access the kernel answers with SIGSEGV is caught (sigsetjmp in a
temporary SIGSEGV handler) and reported instead of killing the interpreter.

Linux only; elsewhere every call raises OSError(ENOSYS).
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport int64_t, uint8_t, uint64_t

cnp.import_array()

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #include <errno.h>
    #if defined(__linux__)

    #include <setjmp.h>
    #include <signal.h>
    #include <unistd.h>
    #include <sys/ioctl.h>
    #include <sys/mman.h>
    #include <sys/resource.h>
    #include <sys/syscall.h>

    static sigjmp_buf mmemu_host_jmp;
    static volatile sig_atomic_t mmemu_host_armed;

    static void mmemu_host_segv(int sig) {
        if (mmemu_host_armed) { mmemu_host_armed = 0; siglongjmp(mmemu_host_jmp, 1); }
        signal(sig, SIG_DFL);
        raise(sig);
    }

    static long mmemu_host_minflt(void) {
        struct rusage r;
        getrusage(RUSAGE_THREAD, &r);
        return r.ru_minflt;
    }

    static inline void mmemu_host_touch(volatile char *p, int op) {
        if (op == 0) {
            (void)*p;
        } else if (op == 1) {
            *p = 1;
        } else {
    #if defined(__x86_64__)
            /* LOCK OR of 1: a locked read-modify-write, reported as a write like the LOCK XADD
               of 0 JVMs pretouch with (spec S5, R25), but leaving the byte non-zero, as the
               emulator models a written page (a zero page would matter to folio splits, R52) */
            __asm__ volatile("lock; orb $1, %0" : "+m"(*p) : : "memory");
    #else
            __atomic_fetch_or((char *)p, 1, __ATOMIC_SEQ_CST);
    #endif
        }
    }

    /* Touch the stack below the caller's frame: a SIGSEGV's signal frame (several kB with the
       extended FPU state) is written there, and a first touch (or, after fork, a copy-on-write)
       of those pages inside a measured window would count as a fault of the access. */
    static __attribute__((noinline)) void mmemu_host_touch_stack(void) {
        volatile char below[65536];
        memset((char *)below, 0, sizeof below);
        __asm__ volatile("" : : "r"(below) : "memory");
    }

    /* Replay n accesses; faults[i] = faults access i took.  Returns n, or the index of the
       access that got SIGSEGV. */
    static int64_t mmemu_host_replay(const uint64_t *addrs, const uint8_t *ops, int op0,
                                     int64_t n, uint8_t *faults) {
        struct sigaction sa, old_segv, old_bus;
        volatile int64_t i;
        long before;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = mmemu_host_segv;
        sa.sa_flags = SA_NODEFER;
        sigaction(SIGSEGV, &sa, &old_segv);
        sigaction(SIGBUS, &sa, &old_bus);
        /* Warm up everything the measured window writes: after a fork these pages are shared
           copy-on-write, and their first write would fault inside the window. */
        volatile char stack[16384];
        memset((char *)stack, 0, sizeof stack);
        mmemu_host_touch_stack();
        if (sigsetjmp(mmemu_host_jmp, 1) == 0) mmemu_host_armed = 0;
        errno = 0;
        mmemu_host_minflt();
        for (i = 0; i < n; i++) {
            int op = ops ? ops[i] : op0;
            before = mmemu_host_minflt();
            if (sigsetjmp(mmemu_host_jmp, 1)) {
                faults[i] = (uint8_t)(mmemu_host_minflt() - before);
                break;
            }
            mmemu_host_armed = 1;
            __asm__ volatile("" : : : "memory");
            mmemu_host_touch((volatile char *)(uintptr_t)addrs[i], op);
            __asm__ volatile("" : : : "memory");
            mmemu_host_armed = 0;
            faults[i] = (uint8_t)(mmemu_host_minflt() - before);
        }
        sigaction(SIGSEGV, &old_segv, NULL);
        sigaction(SIGBUS, &old_bus, NULL);
        return i;
    }

    /* A system call with the faults it took: returns 0 or errno. */
    static int mmemu_host_madvise(uint64_t addr, uint64_t len, int advice, long *faults) {
        long before;
        int ret;
        errno = 0;                           /* written before the window, not inside it */
        before = mmemu_host_minflt();
        ret = madvise((void *)(uintptr_t)addr, len, advice);
        int err = ret ? errno : 0;
        *faults = mmemu_host_minflt() - before;
        return err;
    }

    /* mlock(2) or munlock(2) with the faults it took: returns 0 or errno. */
    static int mmemu_host_mlock(uint64_t addr, uint64_t len, int lock, long *faults) {
        long before;
        int ret;
        errno = 0;
        before = mmemu_host_minflt();
        ret = lock ? mlock((void *)(uintptr_t)addr, len) : munlock((void *)(uintptr_t)addr, len);
        int err = ret ? errno : 0;
        *faults = mmemu_host_minflt() - before;
        return err;
    }

    /* mremap(2) with the faults it took: returns 0 or errno, the new address in *out. */
    static int mmemu_host_mremap(uint64_t addr, uint64_t old_len, uint64_t new_len, int flags,
                                 uint64_t new_addr, uint64_t *out, long *faults) {
        long before;
        void *p;
        errno = 0;
        before = mmemu_host_minflt();
        p = mremap((void *)(uintptr_t)addr, old_len, new_len, flags, (void *)(uintptr_t)new_addr);
        int err = p == MAP_FAILED ? errno : 0;
        *faults = mmemu_host_minflt() - before;
        if (!err) *out = (uint64_t)(uintptr_t)p;
        return err;
    }

    /* mmap(2): private anonymous; shared: MAP_SHARED|MAP_ANONYMOUS (shmem); fd >= 0: MAP_SHARED
       of that file at offset */
    static int mmemu_host_mmap(uint64_t addr, uint64_t len, int prot, int fixed, int shared, int fd,
                               uint64_t offset, uint64_t *out) {
        int flags = (fixed ? MAP_FIXED : 0);
        if (fd >= 0) flags |= MAP_SHARED;
        else flags |= MAP_ANONYMOUS | (shared ? MAP_SHARED : MAP_PRIVATE);
        void *p = mmap((void *)(uintptr_t)addr, len, prot, flags, fd, (off_t)offset);
        if (p == MAP_FAILED) return errno;
        *out = (uint64_t)(uintptr_t)p;
        return 0;
    }

    /* fallocate(2) with its mode bits (FALLOC_FL_KEEP_SIZE 1, FALLOC_FL_PUNCH_HOLE 2), with the
       faults it took: returns 0 or errno */
    static int mmemu_host_fallocate(int fd, int mode, uint64_t offset, uint64_t len, long *faults) {
        long before;
        int ret;
        errno = 0;
        before = mmemu_host_minflt();
        ret = (int)syscall(SYS_fallocate, fd, mode, (off_t)offset, (off_t)len);
        int err = ret ? errno : 0;
        *faults = mmemu_host_minflt() - before;
        return err;
    }

    static int mmemu_host_munmap(uint64_t addr, uint64_t len) {
        return munmap((void *)(uintptr_t)addr, len) ? errno : 0;
    }

    static int mmemu_host_mprotect(uint64_t addr, uint64_t len, int prot) {
        return mprotect((void *)(uintptr_t)addr, len, prot) ? errno : 0;
    }

    static int mmemu_host_prctl(int option, unsigned long a2, unsigned long a3, long *result) {
        long r = syscall(SYS_prctl, option, a2, a3, 0UL, 0UL);
        if (r < 0) return errno;
        *result = r;
        return 0;
    }

    /* PAGEMAP_SCAN (6.7+): the ABI, declared here because older headers lack it */
    struct mmemu_page_region { uint64_t start, end, categories; };
    struct mmemu_pm_scan_arg {
        uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
        uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
    };
    #define MMEMU_PAGEMAP_SCAN _IOWR('f', 16, struct mmemu_pm_scan_arg)

    /* Categories of each page of [start, end) into cats; returns 0 or errno. */
    static int mmemu_host_scan(int fd, uint64_t start, uint64_t end, uint64_t return_mask,
                               uint64_t *cats, struct mmemu_page_region *vec, int64_t vec_len) {
        uint64_t at = start;
        while (at < end) {
            struct mmemu_pm_scan_arg arg;
            long n, k;
            memset(&arg, 0, sizeof arg);
            arg.size = sizeof arg;
            arg.start = at;
            arg.end = end;
            arg.vec = (uint64_t)(uintptr_t)vec;
            arg.vec_len = (uint64_t)vec_len;
            arg.return_mask = return_mask;
            n = ioctl(fd, MMEMU_PAGEMAP_SCAN, &arg);
            if (n < 0) return errno;
            for (k = 0; k < n; k++) {
                uint64_t a;
                for (a = vec[k].start; a < vec[k].end; a += 4096)
                    cats[(a - start) >> 12] = vec[k].categories;
            }
            if (arg.walk_end <= at) return EIO;
            at = arg.walk_end;
        }
        return 0;
    }
    #define MMEMU_HOST_LINUX 1
    #else
    struct mmemu_page_region { uint64_t start, end, categories; };
    static int64_t mmemu_host_replay(const uint64_t *a, const uint8_t *o, int op0, int64_t n, uint8_t *f) { return -1; }
    static int mmemu_host_madvise(uint64_t a, uint64_t l, int adv, long *f) { return ENOSYS; }
    static int mmemu_host_mlock(uint64_t a, uint64_t l, int lock, long *f) { return ENOSYS; }
    static int mmemu_host_mmap(uint64_t a, uint64_t l, int p, int fx, int sh, int fd, uint64_t off, uint64_t *o) { return ENOSYS; }
    static int mmemu_host_fallocate(int fd, int mode, uint64_t off, uint64_t len, long *f) { return ENOSYS; }
    static int mmemu_host_mremap(uint64_t a, uint64_t o, uint64_t n, int fl, uint64_t na, uint64_t *out, long *f) { return ENOSYS; }
    static int mmemu_host_munmap(uint64_t a, uint64_t l) { return ENOSYS; }
    static int mmemu_host_mprotect(uint64_t a, uint64_t l, int p) { return ENOSYS; }
    static int mmemu_host_prctl(int o, unsigned long a2, unsigned long a3, long *r) { return ENOSYS; }
    static int mmemu_host_scan(int fd, uint64_t s, uint64_t e, uint64_t m, uint64_t *c, struct mmemu_page_region *v, int64_t n) { return ENOSYS; }
    #define MMEMU_HOST_LINUX 0
    #endif
    """
    struct mmemu_page_region:
        uint64_t start, end, categories
    int64_t mmemu_host_replay(const uint64_t *addrs, const uint8_t *ops, int op0, int64_t n,
                              uint8_t *faults) nogil
    int mmemu_host_madvise(uint64_t addr, uint64_t length, int advice, long *faults) nogil
    int mmemu_host_mlock(uint64_t addr, uint64_t len, int lock, long *faults) nogil
    int mmemu_host_mmap(uint64_t addr, uint64_t length, int prot, int fixed, int shared, int fd,
                        uint64_t offset, uint64_t *out) nogil
    int mmemu_host_fallocate(int fd, int mode, uint64_t offset, uint64_t length, long *faults) nogil
    int mmemu_host_mremap(uint64_t addr, uint64_t old_len, uint64_t new_len, int flags,
                          uint64_t new_addr, uint64_t *out, long *faults) nogil
    int mmemu_host_munmap(uint64_t addr, uint64_t length) nogil
    int mmemu_host_mprotect(uint64_t addr, uint64_t length, int prot) nogil
    int mmemu_host_prctl(int option, unsigned long a2, unsigned long a3, long *result) nogil
    int mmemu_host_scan(int fd, uint64_t start, uint64_t end, uint64_t return_mask, uint64_t *cats,
                        mmemu_page_region *vec, int64_t vec_len) nogil
    int MMEMU_HOST_LINUX

LINUX = bool(MMEMU_HOST_LINUX)


def replay(cnp.ndarray addrs not None, cnp.ndarray ops, int op0, cnp.ndarray faults not None):
    """Touch each address (uint64 vector) with its op (uint8 vector, or op0 for all); faults
    (uint8 vector) gets the faults of each.  Returns the number of accesses done: less than
    len(addrs) when the access at that index got SIGSEGV."""
    cdef int64_t n = addrs.shape[0]
    cdef const uint8_t *o = NULL
    cdef int64_t done
    if (addrs.dtype != np.uint64 or not addrs.flags.c_contiguous or addrs.ndim != 1
            or faults.dtype != np.uint8 or not faults.flags.c_contiguous or faults.shape[0] != n):
        raise ValueError("replay: bad arrays")
    if ops is not None:
        if ops.dtype != np.uint8 or not ops.flags.c_contiguous or ops.shape[0] != n or (n and ops.max() > 2):
            raise ValueError("replay: bad ops")
        o = <const uint8_t *>cnp.PyArray_DATA(ops)
    elif not 0 <= op0 <= 2:
        raise ValueError("replay: bad op")
    if not LINUX:
        raise OSError(38, "the host side needs Linux")
    with nogil:
        done = mmemu_host_replay(<const uint64_t *>cnp.PyArray_DATA(addrs), o, op0, n,
                                 <uint8_t *>cnp.PyArray_DATA(faults))
    return done


def madvise(uint64_t addr, uint64_t length, int advice):
    """(errno or 0, faults taken)."""
    cdef long faults = 0
    cdef int err
    with nogil:
        err = mmemu_host_madvise(addr, length, advice, &faults)
    return err, faults


def mlock(uint64_t addr, uint64_t length, bint lock):
    """mlock (or munlock): (errno or 0, faults taken)."""
    cdef long faults = 0
    cdef int err
    with nogil:
        err = mmemu_host_mlock(addr, length, lock, &faults)
    return err, faults


def mmap(uint64_t addr, uint64_t length, int prot, bint fixed, bint shared=False, int fd=-1,
         uint64_t offset=0):
    """(errno or 0, address).  Private anonymous; ``shared``: MAP_SHARED|MAP_ANONYMOUS;
    ``fd`` >= 0: MAP_SHARED of that file at ``offset``."""
    cdef uint64_t out = 0
    cdef int err = mmemu_host_mmap(addr, length, prot, fixed, shared, fd, offset, &out)
    return err, out


def fallocate(int fd, int mode, uint64_t offset, uint64_t length):
    """fallocate(2): (errno or 0, faults taken); mode FALLOC_FL_KEEP_SIZE 1, FALLOC_FL_PUNCH_HOLE 2."""
    cdef long faults = 0
    cdef int err
    with nogil:
        err = mmemu_host_fallocate(fd, mode, offset, length, &faults)
    return err, faults


def mremap(uint64_t addr, uint64_t old_len, uint64_t new_len, int flags, uint64_t new_addr):
    """(errno or 0, new address, faults taken); flags: MREMAP_MAYMOVE 1, MREMAP_FIXED 2."""
    cdef uint64_t out = 0
    cdef long faults = 0
    cdef int err
    with nogil:
        err = mmemu_host_mremap(addr, old_len, new_len, flags, new_addr, &out, &faults)
    return err, out, faults


def munmap(uint64_t addr, uint64_t length):
    return mmemu_host_munmap(addr, length)


def mprotect(uint64_t addr, uint64_t length, int prot):
    return mmemu_host_mprotect(addr, length, prot)


def prctl(int option, unsigned long arg2, unsigned long arg3):
    """(errno or 0, result)."""
    cdef long result = 0
    cdef int err = mmemu_host_prctl(option, arg2, arg3, &result)
    return err, result


def scan(int fd, uint64_t start, uint64_t end, uint64_t return_mask):
    """PAGEMAP_SCAN categories of each page of [start, end) (uint64 per page)."""
    if start > end or (start | end) & 4095:
        raise ValueError("scan: bad range")
    cdef int64_t n = (end - start) >> 12
    cdef cnp.ndarray cats = np.zeros(n, np.uint64)
    cdef int64_t vec_len = min(max(n, 1), 4096)      # regions merge; the scan loops for more
    cdef cnp.ndarray vec = np.zeros((vec_len, 3), np.uint64)
    cdef int err
    with nogil:
        err = mmemu_host_scan(fd, start, end, return_mask, <uint64_t *>cnp.PyArray_DATA(cats),
                              <mmemu_page_region *>cnp.PyArray_DATA(vec), vec_len)
    if err:
        raise OSError(err, "PAGEMAP_SCAN failed")
    return cats
