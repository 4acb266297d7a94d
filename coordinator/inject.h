/* coordinator/inject.h — test hook (--inject-garbage N): before serving,
 * send every other rank N frames of each malformed kind — random bytes as a
 * control frame, a control frame over the size cap, and a bulk tensor frame
 * with a bad header. Each rank must reject and log them and keep serving;
 * the run's summary counts them in frames_rejected. */
#ifndef MR_COORD_INJECT_H
#define MR_COORD_INJECT_H

#include "runtime/role.h"

/* Returns the number of frames sent. */
int mr_inject_garbage(mr_role *r, int n_each);

#endif
