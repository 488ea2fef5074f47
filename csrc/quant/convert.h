/* convert.h - float32 <-> float16 / bfloat16 conversions.
 *
 * Why here: bf16 and fp16 operands are made on the CPU (master weights,
 * activations and gradients stay float32) and handed to a backend; a backend
 * that lacks a 16-bit primitive converts back. Both directions must round
 * exactly like the hardware and like the references (NumPy for fp16,
 * PyTorch for bf16), so every path here is bit-exact:
 *
 * float32 -> float16 (IEEE binary16, stored as uint16_t bits):
 *   round to nearest, ties to even; |x| >= 65520 -> +-Inf (65504 is the
 *   largest finite half); results below 2^-14 become half subnormals (step
 *   2^-24), |x| <= 2^-25 -> +-0; NaN -> quiet NaN keeping the sign and the
 *   top 9 payload bits (0x7E00 | payload), as x86 F16C's VCVTPS2PH does.
 * float16 -> float32: exact (subnormals normalised); NaN -> quiet NaN with
 *   the payload shifted up (quiet bit set), as VCVTPH2PS does.
 * float32 -> bfloat16 (top 16 bits of a float32, stored as uint16_t):
 *   round to nearest, ties to even on the dropped 16 bits; overflow rounds
 *   to +-Inf; fp32 subnormals round like any other value (bf16 has fp32's
 *   exponent range); NaN -> quiet NaN keeping sign and top payload bits
 *   ((bits >> 16) | 0x0040), as AVX512-BF16's VCVTNEPS2BF16 does.
 *   (PyTorch returns 0x7FC0 or 0xFFFF for NaN depending on the code path:
 *   any NaN is a NaN.)
 * bfloat16 -> float32: exact (bits << 16).
 *
 * The array functions use F16C intrinsics when the build has them
 * (__F16C__, from -march=native) and the portable C code below otherwise;
 * the *_portable variants always use the C code (tests check both give the
 * same bits). Arrays may be any length >= 0; OpenMP splits large ones.
 */
#ifndef ET_QUANT_CONVERT_H
#define ET_QUANT_CONVERT_H

#include <stdint.h>
#include <string.h>

#include "../core/status.h"

static inline uint32_t et_f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float et_bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* float32 -> float16 bits, round to nearest even (see the header comment). */
static inline uint16_t et_f16_from_f32(float f)
{
    uint32_t x = et_f32_bits(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t ax = x & 0x7FFFFFFFu;
    if (ax > 0x7F800000u)                       /* NaN: quiet, keep top payload */
        return (uint16_t)(sign | 0x7E00u | ((ax >> 13) & 0x3FFu));
    if (ax >= 0x477FF000u)                      /* >= 65520 (incl. Inf) -> Inf */
        return (uint16_t)(sign | 0x7C00u);
    if (ax >= 0x38800000u) {                    /* >= 2^-14: normal half */
        uint32_t m = ax - (112u << 23);         /* rebias exponent 127 -> 15 */
        m += 0x0FFFu + ((m >> 13) & 1u);        /* RNE on the 13 dropped bits */
        return (uint16_t)(sign | (m >> 13));    /* a carry bumps the exponent */
    }
    if (ax <= 0x33000000u)                      /* <= 2^-25 (tie -> even 0) */
        return (uint16_t)sign;
    /* half subnormal: value / 2^-24 = m * 2^(e - 126), shift in [14, 24] */
    uint32_t e = ax >> 23;
    uint32_t m = (ax & 0x007FFFFFu) | 0x00800000u;
    uint32_t shift = 126u - e;
    uint32_t r = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1u);
    r += (rem > half) | ((rem == half) & (r & 1u));
    return (uint16_t)(sign | r);                /* r == 0x400 is the least normal */
}

/* float16 bits -> float32, exact. */
static inline float et_f32_from_f16(uint16_t h)
{
    uint32_t sign = ((uint32_t)h & 0x8000u) << 16;
    uint32_t e = ((uint32_t)h >> 10) & 0x1Fu;
    uint32_t m = (uint32_t)h & 0x3FFu;
    if (e == 0x1Fu)                             /* Inf / NaN (quieted) */
        return et_bits_f32(sign | 0x7F800000u | (m ? 0x00400000u | (m << 13) : 0u));
    if (e == 0) {
        if (m == 0) return et_bits_f32(sign);
        /* subnormal m * 2^-24: normalise so the leading 1 is bit 10 */
        int sh = __builtin_clz(m) - 21;
        m = (m << sh) & 0x3FFu;
        return et_bits_f32(sign | ((uint32_t)(113 - sh) << 23) | (m << 13));
    }
    return et_bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

/* float32 -> bfloat16 bits, round to nearest even. */
static inline uint16_t et_bf16_from_f32(float f)
{
    uint32_t x = et_f32_bits(f);
    uint32_t rounded = (x + 0x7FFFu + ((x >> 16) & 1u)) >> 16;
    uint32_t nan = (x >> 16) | 0x0040u;
    return (uint16_t)((x & 0x7FFFFFFFu) > 0x7F800000u ? nan : rounded);
}

static inline float et_f32_from_bf16(uint16_t b)
{
    return et_bits_f32((uint32_t)b << 16);
}

/* 1 when the array conversions use F16C instructions, else 0. */
int et_convert_have_f16c(void);

/* h[i] = fp16(x[i]), i < n. */
et_status et_convert_f32_to_f16(const float *x, uint16_t *h, int64_t n);
/* x[i] = fp32(h[i]). */
et_status et_convert_f16_to_f32(const uint16_t *h, float *x, int64_t n);
/* b[i] = bf16(x[i]). */
et_status et_convert_f32_to_bf16(const float *x, uint16_t *b, int64_t n);
/* x[i] = fp32(b[i]). */
et_status et_convert_bf16_to_f32(const uint16_t *b, float *x, int64_t n);

/* The same fp16 conversions through the portable C code only. */
et_status et_convert_f32_to_f16_portable(const float *x, uint16_t *h, int64_t n);
et_status et_convert_f16_to_f32_portable(const uint16_t *h, float *x, int64_t n);

#endif
