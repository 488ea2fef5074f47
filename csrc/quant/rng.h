/* rng.h - counter-based random numbers for stochastic rounding.
 *
 * Why counter-based: the random number used for element i is a pure function
 * of (seed, offset, i), so a stochastically rounded tensor is reproducible
 * and does not depend on how many threads quantize it or in which order the
 * chunks run. No generator state is shared between threads.
 *
 * The hash is SplitMix64's finaliser (Steele, Lea, Flood 2014; the one
 * java.util.SplittableRandom and NumPy's SeedSequence helpers use), applied to
 * a Weyl sequence:
 *   key      = mix64(seed ^ mix64(offset ^ ET_RNG_OFFSET_SALT))
 *   bits(i)  = mix64(key + (i + 1) * ET_RNG_GOLDEN)            (mod 2^64)
 *   u(i)     = (bits(i) >> 40) * 2^-24                          in [0, 1)
 * u has 24 random bits, exactly representable in float32. The formula is
 * part of the contract (tests re-implement it in NumPy, bit for bit).
 */
#ifndef ET_QUANT_RNG_H
#define ET_QUANT_RNG_H

#include <stdint.h>

#define ET_RNG_GOLDEN 0x9E3779B97F4A7C15ULL
#define ET_RNG_OFFSET_SALT 0xD1B54A32D192ED03ULL

static inline uint64_t et_rng_mix64(uint64_t z)
{
    z ^= z >> 30;
    z *= 0xBF58476D1CE4E5B9ULL;
    z ^= z >> 27;
    z *= 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return z;
}

/* The per-call key of (seed, offset). */
static inline uint64_t et_rng_key(uint64_t seed, uint64_t offset)
{
    return et_rng_mix64(seed ^ et_rng_mix64(offset ^ ET_RNG_OFFSET_SALT));
}

/* u(i) in [0, 1), 24 random bits. */
static inline float et_rng_uniform(uint64_t key, uint64_t i)
{
    uint64_t b = et_rng_mix64(key + (i + 1) * ET_RNG_GOLDEN);
    /* < 2^24: the signed conversion is exact and vectorises on AVX2 */
    return (float)(int32_t)(b >> 40) * 0x1.0p-24f;
}

#endif
