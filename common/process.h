/* common/process.h — process set-up shared by every moerun executable. */
#ifndef MR_PROCESS_H
#define MR_PROCESS_H

/* Keep large freed buffers (per-layer scratch, transport messages up to
 * 32 MiB) in the heap instead of returning them to the kernel with munmap —
 * otherwise every message or expert batch pays fresh page faults. Call once
 * at start. */
void mr_process_init(void);

#endif
