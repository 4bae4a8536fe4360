/* The C test programs' random numbers: xorshift64 (Marsaglia 2003), uniform in [-1, 1). Each
 * program that includes this header has its own generator state, seeded with RND_SEED (define it
 * before the include for another sequence). */
#ifndef BNSYM_TEST_RND_H
#define BNSYM_TEST_RND_H

#include <stdint.h>

#ifndef RND_SEED
#define RND_SEED 88172645463325252ULL
#endif

static uint64_t rng_state = RND_SEED;

static double rnd(void) /* uniform in [-1, 1): the top 53 bits of the state */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 4503599627370496.0 - 1.0;
}

#endif
