/* common/log.h — diagnostics to stderr.
 *
 * stdout is reserved for results (token ids, tables); everything a human reads
 * while a command runs goes through mr_log to stderr, prefixed with the process
 * tag set by mr_log_set_tag ("moerun", "decode[2]", ...). MOERUN_LOG=debug|info|
 * warn|error selects the threshold (default info). Thread-safe (one fprintf).
 */
#ifndef MR_LOG_H
#define MR_LOG_H

typedef enum { MR_LOG_DEBUG, MR_LOG_INFO, MR_LOG_WARN, MR_LOG_ERROR } mr_log_level;

void mr_log_set_tag(const char *tag);

void mr_log(mr_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define MR_DEBUG(...) mr_log(MR_LOG_DEBUG, __VA_ARGS__)
#define MR_INFO(...) mr_log(MR_LOG_INFO, __VA_ARGS__)
#define MR_WARN(...) mr_log(MR_LOG_WARN, __VA_ARGS__)
#define MR_ERROR(...) mr_log(MR_LOG_ERROR, __VA_ARGS__)

#endif
