/* common/status.h — status codes and the error message that travels with them.
 *
 * Every fallible moerun function returns mr_status and writes results through
 * out-pointers. On failure it calls mr_fail(code, fmt, ...) which records a
 * human-readable message naming the file / tensor / field / rank that was wrong
 * and returns the code, so the usual idiom is:
 *
 *     if (n < 0) return mr_fail(MR_EINVAL, "%s: n_tokens must be >= 0", path);
 *
 * The message lives in a thread-local buffer (like errno): read it with
 * mr_last_error() before calling anything else that may fail. mr_fail_prefix()
 * prepends context ("loading model /x: ") to the current message when an error
 * propagates outwards. Thread-safe (per-thread state), no allocation.
 */
#ifndef MR_STATUS_H
#define MR_STATUS_H

typedef enum mr_status {
    MR_OK = 0,
    MR_EINVAL,       /* bad argument or malformed input */
    MR_ENOMEM,       /* allocation failed */
    MR_EIO,          /* file or device I/O failed */
    MR_EPROTO,       /* malformed frame / file format violation */
    MR_ETIMEDOUT,    /* a deadline passed */
    MR_EPEER,        /* a peer rank failed or disconnected */
    MR_ERANGE,       /* value out of range (token id, length, position) */
    MR_EUNSUPPORTED, /* valid input this build does not support */
    MR_EINTERNAL     /* a bug: an invariant did not hold */
} mr_status;

/* Short stable name of a code, e.g. "EINVAL". Never NULL. */
const char *mr_status_name(mr_status code);

/* Record a formatted message for the calling thread and return `code`. */
mr_status mr_fail(mr_status code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prepend formatted context to the calling thread's message; returns `code`. */
mr_status mr_fail_prefix(mr_status code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The calling thread's last message ("" when none). Valid until the next mr_fail. */
const char *mr_last_error(void);

/* Propagate a non-OK status from an expression. */
#define MR_TRY(expr)                                    \
    do {                                                \
        mr_status mr_try_status_ = (expr);              \
        if (mr_try_status_ != MR_OK) return mr_try_status_; \
    } while (0)

#endif
