/* tests/coordinator/test_util.h — shared helpers of the coordinator unit tests. */
#ifndef MR_TEST_COORD_UTIL_H
#define MR_TEST_COORD_UTIL_H

#include <stdlib.h>
#include <string.h>

#include "model/config.h"
#include "model/synth.h"

/* The built-in tiny config (vocab 256, 256 positions, eos 1). */
static inline mr_config tiny_config(void)
{
    mr_config cfg;
    memset(&cfg, 0, sizeof cfg);
    if (mr_synth_preset_config("tiny", &cfg) != MR_OK) abort();
    return cfg;
}

#endif
