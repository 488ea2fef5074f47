/* wcache.h - prepacked int8 weights (issue 5): the per-output-channel s8
 * quantization of a conv / linear weight, kept between calls so that an
 * unchanged weight is not NaN-checked, range-scanned and quantized again on
 * every forward (resnet18 int8 batch 1: 15 % of the CPU time, see
 * benchmarks/results/inference/PROFILE-resnet18-int8-b1.md), plus backend
 * layouts of it (oneDNN's blocked weights: the "aux" blob below).
 *
 * Never stale, whatever wrote the weight. An entry keeps an exact fp32 copy
 * of the weight it was quantized from and is served only when the weight's
 * bytes still equal that copy (memcmp, one read of w and of the copy). So
 * every way a weight can change - optimizer steps, load_state_dict, in-place
 * tensor ops, .data assignment, writes through .numpy() / from_numpy views
 * or state_dict() arrays, nn.init, checkpoint loads, gradcheck's
 * perturbations, a freed buffer reused by another array - makes the cache
 * miss; no version counter has to be bumped by every writer (the public API
 * hands out writable numpy views, which no counter can see). The check costs
 * one memcmp of 2 x 4 bytes per weight instead of the quantizer's finite
 * check + range scan + rounding pass (+ the oneDNN weight reorder). Precision
 * changes need nothing: an entry holds the int8 quantization only, which
 * depends on the weight's values alone (7-bit activations do not enter it).
 *
 * Bounded: at most et_wcache_capacity() bytes (fp32 copy + s8 + scales +
 * aux blobs); least recently used entries are evicted, but not ones used in
 * the last 256 lookups (wcache.c: WC_PROTECT; a model larger than the cache
 * then keeps part of its weights cached instead of thrashing); a weight that
 * does not fit is not kept (the caller quantizes into its own buffer).
 * Capacity 0 disables the cache (ET_WEIGHT_CACHE_MB=0 in the environment, or
 * _C.set_weight_cache_capacity(0)). The Python layer also drops an entry
 * when the weight array it was made for dies (weakref, bind_lowp.c).
 *
 * Thread safety: one mutex; an entry in use by a call is pinned (it is
 * neither refilled nor freed until released), so a forward on another
 * thread never sees it change under its job. */
#ifndef ET_QUANT_WCACHE_H
#define ET_QUANT_WCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "../core/status.h"

/* A pinned entry: wq (oc, k) s8 and sw (oc,) scales, exactly what
 * et_quantize_per_channel_s8(w, oc, k, ...) gives for the weight's current
 * values. entry == NULL: not cached (disabled, or the weight is larger than
 * the capacity): the caller quantizes itself. */
typedef struct et_wcache_ref {
    void *entry;
    const int8_t *wq;
    const float *sw;
    uint64_t owner;   /* the entry's id, stable across refills (for weakref drops) */
    int hit;          /* 1: served from the cache; 0: quantized now */
    int fresh;        /* 1: a new entry was created by this call (register its owner) */
} et_wcache_ref;

/* Looks up (or quantizes and stores) the per-channel s8 quantization of the
 * f32 weight w (oc, k). Errors are the quantizer's (NaN/Inf naming the
 * index) or ET_ERR_NOMEM; on error nothing is pinned. Release with
 * et_wcache_release once the job that reads ref->wq has finished. */
et_status et_wcache_quantize_s8(const float *w, int64_t oc, int64_t k, et_wcache_ref *ref);
void et_wcache_release(et_wcache_ref *ref);

/* Backend layouts of a pinned entry, found by its wq pointer (the job sees
 * only the s8 weight). key/keylen describe the layout (e.g. oneDNN's memory
 * descriptor, compared bytewise). aux_get: the stored blob or NULL (no
 * pinned entry owns wq, or no blob of that key). aux_put: stores a copy of
 * bytes at blob (replacing another key's blob); 0 when stored, -1 when not
 * (no pinned entry owns wq, over capacity, no memory): harmless either way. */
const void *et_wcache_aux_get(const void *wq, const void *key, size_t keylen);
int et_wcache_aux_put(const void *wq, const void *key, size_t keylen, const void *blob, size_t bytes);

/* The owner id of the last entry created on this thread by
 * et_wcache_quantize_s8 since the previous call (0: none), cleared: the
 * Python layer ties it to the weight array's lifetime (weakref). */
uint64_t et_wcache_take_fresh(void);

/* Frees the entry of this owner id (its weight died); deferred while pinned. */
void et_wcache_drop(uint64_t owner);
void et_wcache_clear(void);
int64_t et_wcache_capacity(void);
void et_wcache_set_capacity(int64_t bytes);   /* < 0: the default; evicts down to it */

typedef struct et_wcache_stats {
    int64_t hits, misses, stale, aux_hits, evictions, entries, bytes, capacity;
} et_wcache_stats;
void et_wcache_get_stats(et_wcache_stats *out);

#endif
