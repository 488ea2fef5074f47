/* wcache.c - prepacked int8 weights; see wcache.h for the design (why a
 * content check rather than a version counter, bounds, thread safety). */
#include "wcache.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "../core/tensor.h"
#include "quantize.h"

/* One weight: its exact f32 copy wf (oc, k), wq = quantize_per_channel_s8(wf)
 * (oc, k) and sw (oc,), and at most one backend layout blob of wq. */
typedef struct wc_entry {
    const float *src;          /* the weight's data pointer when it was stored (lookup key) */
    int64_t oc, k;
    float *wf;
    int8_t *wq;
    float *sw;
    void *aux, *aux_key;       /* blob (aux_bytes) and its layout key (aux_keylen) */
    size_t aux_bytes, aux_keylen;
    uint64_t owner, last_used;
    int pins, dead;
} wc_entry;

#define WC_DEFAULT_MB 256

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static wc_entry **ents;   /* [cap_n], the first n_ents used */
static int64_t n_ents, cap_n;
static int64_t total_bytes, capacity = -2;   /* -2: not read from the environment yet */
static int64_t n_hits, n_misses, n_stale, n_aux_hits, n_evictions;
static uint64_t clock_, next_owner;

static _Thread_local uint64_t last_fresh;

uint64_t et_wcache_take_fresh(void)
{
    uint64_t o = last_fresh;
    last_fresh = 0;
    return o;
}

static int64_t base_bytes(int64_t oc, int64_t k) { return oc * k * 5 + oc * 4; }

/* With mu held. */
static int64_t cap_locked(void)
{
    if (capacity == -2) {
        const char *s = getenv("ET_WEIGHT_CACHE_MB");
        long long mb = s && *s ? atoll(s) : WC_DEFAULT_MB;
        capacity = mb < 0 ? (int64_t)WC_DEFAULT_MB << 20 : (int64_t)mb << 20;
    }
    return capacity;
}

static void aux_free(wc_entry *e)
{
    total_bytes -= (int64_t)e->aux_bytes + (int64_t)e->aux_keylen;
    free(e->aux_key);
    et_aligned_free(e->aux);
    e->aux = e->aux_key = NULL;
    e->aux_bytes = e->aux_keylen = 0;
}

/* Removes ents[i] (unpinned) and frees it. With mu held. */
static void remove_at(int64_t i)
{
    wc_entry *e = ents[i];
    aux_free(e);
    total_bytes -= base_bytes(e->oc, e->k);
    et_aligned_free(e->wf);
    et_aligned_free(e->wq);
    et_aligned_free(e->sw);
    free(e);
    ents[i] = ents[n_ents - 1];
    n_ents--;
}

/* Entries used within the last WC_PROTECT lookups are not evicted to make
 * room for a new weight: a model whose weights exceed the capacity then keeps
 * its first weights cached and the rest bypass the cache, where plain LRU on
 * that cyclic access pattern would evict every entry before its next use (a
 * miss, a copy and a quantization on every call: slower than no cache). An
 * idle entry (an unused model's) ages past it and is evicted. */
#define WC_PROTECT 256

/* Evicts unpinned least-recently-used entries until `need` more bytes fit;
 * 0 when they fit. force: evict recently used ones too (capacity lowered).
 * With mu held. */
static int make_room(int64_t need, int force)
{
    const int64_t cap = cap_locked();
    while (total_bytes + need > cap) {
        int64_t v = -1;
        for (int64_t i = 0; i < n_ents; i++)
            if (!ents[i]->pins && (v < 0 || ents[i]->last_used < ents[v]->last_used)) v = i;
        if (v < 0) return -1;   /* all pinned */
        if (!force && clock_ - ents[v]->last_used < WC_PROTECT) return -1;
        remove_at(v);
        n_evictions++;
    }
    return 0;
}

static wc_entry *find_src(const float *w, int64_t oc, int64_t k)
{
    for (int64_t i = 0; i < n_ents; i++) {
        wc_entry *e = ents[i];
        if (e->src == w && e->oc == oc && e->k == k && !e->dead) return e;
    }
    return NULL;
}

static void pin(wc_entry *e, et_wcache_ref *ref, int hit, int fresh)
{
    e->pins++;
    e->last_used = ++clock_;
    ref->entry = e;
    ref->wq = e->wq;
    ref->sw = e->sw;
    ref->owner = e->owner;
    ref->hit = hit;
    ref->fresh = fresh;
}

et_status et_wcache_quantize_s8(const float *w, int64_t oc, int64_t k, et_wcache_ref *ref)
{
    memset(ref, 0, sizeof *ref);
    if (oc <= 0 || k <= 0 || !w) return ET_OK;   /* the quantizer reports bad arguments */
    const int64_t n = oc * k, need = base_bytes(oc, k);
    et_status st = ET_OK;
    pthread_mutex_lock(&mu);
    clock_++;   /* one tick per lookup, bypasses included (WC_PROTECT's unit) */
    if (need > cap_locked()) goto out;   /* disabled (0) or too large: not cached */
    wc_entry *e = find_src(w, oc, k);
    if (e && memcmp(e->wf, w, (size_t)n * sizeof(float)) == 0) {
        n_hits++;
        pin(e, ref, 1, 0);
        goto out;
    }
    if (e) {
        /* the weight changed since it was stored: requantize in place, unless
         * a call on another thread still reads the entry (then bypass) */
        if (e->pins) goto out;
        n_stale++;
        aux_free(e);
        /* copy first, then quantize the copy: wq is always quantize(wf), even
         * if another thread writes w meanwhile (its race, not a stale entry) */
        memcpy(e->wf, w, (size_t)n * sizeof(float));
        st = et_quantize_per_channel_s8(e->wf, oc, k, e->wq, e->sw);
        if (st != ET_OK) {
            for (int64_t i = 0; i < n_ents; i++)
                if (ents[i] == e) { remove_at(i); break; }
            goto out;
        }
        pin(e, ref, 0, 0);
        goto out;
    }
    n_misses++;
    if (make_room(need, 0) != 0) goto out;
    if (n_ents == cap_n) {
        int64_t nc = cap_n ? 2 * cap_n : 32;
        wc_entry **ne = realloc(ents, (size_t)nc * sizeof *ne);
        if (!ne) goto out;
        ents = ne;
        cap_n = nc;
    }
    e = calloc(1, sizeof *e);
    if (!e) goto out;
    e->wf = et_aligned_alloc((size_t)n * sizeof(float));
    e->wq = et_aligned_alloc((size_t)n);
    e->sw = et_aligned_alloc((size_t)oc * sizeof(float));
    if (!e->wf || !e->wq || !e->sw) {
        et_aligned_free(e->wf); et_aligned_free(e->wq); et_aligned_free(e->sw);
        free(e);
        goto out;   /* no memory for the cache: the caller quantizes itself */
    }
    memcpy(e->wf, w, (size_t)n * sizeof(float));
    st = et_quantize_per_channel_s8(e->wf, oc, k, e->wq, e->sw);
    if (st != ET_OK) {   /* NaN/Inf: nothing stored, the error goes up */
        et_aligned_free(e->wf); et_aligned_free(e->wq); et_aligned_free(e->sw);
        free(e);
        goto out;
    }
    e->src = w;
    e->oc = oc;
    e->k = k;
    e->owner = ++next_owner;
    ents[n_ents++] = e;
    total_bytes += need;
    pin(e, ref, 0, 1);
    last_fresh = e->owner;
out:
    pthread_mutex_unlock(&mu);
    return st;
}

void et_wcache_release(et_wcache_ref *ref)
{
    if (!ref || !ref->entry) return;
    pthread_mutex_lock(&mu);
    wc_entry *e = ref->entry;
    e->pins--;
    if (!e->pins && e->dead)
        for (int64_t i = 0; i < n_ents; i++)
            if (ents[i] == e) { remove_at(i); break; }
    pthread_mutex_unlock(&mu);
    ref->entry = NULL;
}

/* The pinned entry whose wq is `wq`. With mu held. */
static wc_entry *find_pinned_wq(const void *wq)
{
    for (int64_t i = 0; i < n_ents; i++)
        if (ents[i]->wq == wq && ents[i]->pins) return ents[i];
    return NULL;
}

const void *et_wcache_aux_get(const void *wq, const void *key, size_t keylen)
{
    const void *blob = NULL;
    pthread_mutex_lock(&mu);
    wc_entry *e = find_pinned_wq(wq);
    if (e && e->aux && e->aux_keylen == keylen && memcmp(e->aux_key, key, keylen) == 0) {
        blob = e->aux;   /* stays valid: e is pinned, and only an unpinned entry is refilled */
        n_aux_hits++;
    }
    pthread_mutex_unlock(&mu);
    return blob;
}

int et_wcache_aux_put(const void *wq, const void *key, size_t keylen, const void *blob, size_t bytes)
{
    int rc = -1;
    pthread_mutex_lock(&mu);
    wc_entry *e = find_pinned_wq(wq);
    /* one pin only: a concurrent call on the same entry may be reading the
     * current blob (aux_get's pointer), which must not be freed under it */
    if (!e || e->pins != 1) goto out;
    aux_free(e);
    const int64_t need = (int64_t)(bytes + keylen);
    if (make_room(need, 0) != 0) goto out;   /* e is pinned: never evicted here */
    void *b = et_aligned_alloc(bytes ? bytes : 1), *kc = malloc(keylen ? keylen : 1);
    if (!b || !kc) { et_aligned_free(b); free(kc); goto out; }
    memcpy(b, blob, bytes);
    memcpy(kc, key, keylen);
    e->aux = b;
    e->aux_key = kc;
    e->aux_bytes = bytes;
    e->aux_keylen = keylen;
    total_bytes += need;
    rc = 0;
out:
    pthread_mutex_unlock(&mu);
    return rc;
}

void et_wcache_drop(uint64_t owner)
{
    pthread_mutex_lock(&mu);
    for (int64_t i = 0; i < n_ents; i++)
        if (ents[i]->owner == owner) {
            if (ents[i]->pins) ents[i]->dead = 1;
            else remove_at(i);
            break;
        }
    pthread_mutex_unlock(&mu);
}

void et_wcache_clear(void)
{
    pthread_mutex_lock(&mu);
    for (int64_t i = n_ents - 1; i >= 0; i--) {
        if (ents[i]->pins) ents[i]->dead = 1;
        else remove_at(i);
    }
    pthread_mutex_unlock(&mu);
}

int64_t et_wcache_capacity(void)
{
    pthread_mutex_lock(&mu);
    int64_t c = cap_locked();
    pthread_mutex_unlock(&mu);
    return c;
}

void et_wcache_set_capacity(int64_t bytes)
{
    pthread_mutex_lock(&mu);
    capacity = bytes < 0 ? (int64_t)WC_DEFAULT_MB << 20 : bytes;
    make_room(0, 1);   /* evicts what is unpinned until the rest fits */
    pthread_mutex_unlock(&mu);
}

void et_wcache_get_stats(et_wcache_stats *o)
{
    pthread_mutex_lock(&mu);
    o->hits = n_hits;
    o->misses = n_misses;
    o->stale = n_stale;
    o->aux_hits = n_aux_hits;
    o->evictions = n_evictions;
    o->entries = n_ents;
    o->bytes = total_bytes;
    o->capacity = cap_locked();
    pthread_mutex_unlock(&mu);
}
