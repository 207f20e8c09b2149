/* The rig's side of the protocol: see ns_rig.h. */
#include "ns_rig.h"

#include <string.h>

void ns_rig_init(ns_rig *r, const ns_rig_config *cfg)
{
    memset(r, 0, sizeof *r);
    r->cfg = *cfg;
    if (r->cfg.sample_rate_hz == 0)
        r->cfg.sample_rate_hz = 10000;
    r->period_us = 1000000u / r->cfg.sample_rate_hz;
    r->period_frac = 1000000u % r->cfg.sample_rate_hz;
    ns_decoder_init(&r->dec);
    r->rng = 0x9E3779B9u;
}

/* ---- rings ---- */

static uint32_t tx_free(const ns_rig *r)
{
    return NS_TX_RING - (r->tx.head - r->tx.tail);
}

uint32_t ns_rig_tx_pending(const ns_rig *r)
{
    return r->tx.head - r->tx.tail;
}

/* Queue bytes whole or not at all (a partial frame would cost the next
 * one too). Producer: the sample cycle. */
static int tx_put(ns_rig *r, const uint8_t *b, uint32_t n)
{
    if (tx_free(r) < n) {
        r->n.tx_full++;
        return 0;
    }
    uint32_t h = r->tx.head;
    for (uint32_t i = 0; i < n; i++)
        r->tx.buf[(h + i) & (NS_TX_RING - 1)] = b[i];
    NS_BARRIER();
    r->tx.head = h + n;
    return 1;
}

uint32_t ns_rig_tx_peek(ns_rig *r, const uint8_t **p)
{
    uint32_t t = r->tx.tail;
    uint32_t n = r->tx.head - t;
    NS_BARRIER();
    uint32_t at = t & (NS_TX_RING - 1);
    if (n > NS_TX_RING - at)
        n = NS_TX_RING - at;
    *p = r->tx.buf + at;
    return n;
}

void ns_rig_tx_consume(ns_rig *r, uint32_t n)
{
    NS_BARRIER();
    r->tx.tail = r->tx.tail + n;
}

uint32_t ns_rig_rx_free(const ns_rig *r)
{
    return NS_RX_RING - (r->rx.head - r->rx.tail);
}

int ns_rig_rx_put(ns_rig *r, uint8_t byte)
{
    uint32_t h = r->rx.head;
    if (h - r->rx.tail >= NS_RX_RING) {
        r->n.rx_full++;
        return 0;
    }
    r->rx.buf[h & (NS_RX_RING - 1)] = byte;
    NS_BARRIER();
    r->rx.head = h + 1;
    return 1;
}

/* ---- frames out ---- */

#ifdef NS_FAULT_INJECTION
/* xorshift32: fault injection's randomness. */
static uint32_t rnd(ns_rig *r)
{
    uint32_t x = r->rng;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return r->rng = x;
}

static float unit(ns_rig *r)
{
    return (float)(rnd(r) >> 8) * (1.0f / 16777216.0f);
}
#endif

/* Encode with a leading 0x00 (docs/protocol.md: noise before a frame ends
 * as a bad frame of its own) into out; returns the byte count. */
static uint32_t wire(ns_rig *r, ns_frame *f, uint8_t out[NS_MAX_WIRE + 1])
{
    f->seq = r->seq++;
    out[0] = 0;
    return 1u + (uint32_t)ns_encode(f, out + 1);
}

static int send(ns_rig *r, ns_frame *f)
{
    uint8_t b[NS_MAX_WIRE + 1];
    uint16_t seq = r->seq;
    uint32_t n = wire(r, f, b);
    if (tx_put(r, b, n)) {
        r->n.frames_sent++;
        return 1;
    }
    r->seq = seq; /* not sent: the number is not used up */
    return 0;
}

static int send_hello(ns_rig *r)
{
    ns_frame f;
    memset(&f, 0, sizeof f);
    f.type = NS_HELLO;
    f.u.hello.version = r->cfg.version;
    f.u.hello.rig_id = r->cfg.rig_id;
    f.u.hello.sample_rate_hz = r->cfg.sample_rate_hz;
    f.u.hello.v_unit = r->cfg.v_unit;
    f.u.hello.i_unit = r->cfg.i_unit;
    f.u.hello.v_scale = r->cfg.v_scale;
    f.u.hello.i_scale = r->cfg.i_scale;
    return send(r, &f);
}

/* ---- the output ---- */

static void zero(ns_rig *r)
{
    r->active = 0;
    r->out = 0;
}

void ns_rig_link_lost(ns_rig *r)
{
    zero(r);
    r->linked = 0;
    ns_decoder_reset(&r->dec);
    r->rx.tail = r->rx.head;
    r->tx.tail = r->tx.head;
}

void ns_rig_fault(ns_rig *r, uint16_t code, uint32_t detail)
{
    zero(r);
    r->faulted = 1;
    r->fault_pending = 1;
    r->fault_code = code;
    r->fault_detail = detail;
}

static int stalled(const ns_rig *r)
{
#ifdef NS_FAULT_INJECTION
    const ns_faults *f = &r->faults;
    return f->stall_us > 0 && r->t_us >= f->stall_at_us && r->t_us < f->stall_at_us + f->stall_us;
#else
    (void)r;
    return 0;
#endif
}

static void apply(ns_rig *r, const ns_frame *f)
{
    const ns_command *c = &f->u.command;
    int32_t a = c->amplitude;
    int32_t lim = r->cfg.i_limit;
    if (lim > 0 && (a > lim || a < -lim)) {
        a = a > 0 ? lim : -lim;
        r->n.clamped++;
    }
    uint32_t valid = c->valid_for_us;
    if (r->cfg.max_valid_us > 0 && valid > r->cfg.max_valid_us)
        valid = r->cfg.max_valid_us;
    r->out = a;
    r->active = 1;
    r->expires_us = r->t_us + valid;
    r->cmd_t_us = r->t_us;
    r->echo_us = c->daemon_us;
    r->cmd_seq = f->seq;
    r->n.commands++;
}

static void receive(ns_rig *r)
{
    int deaf = stalled(r);
    uint32_t t = r->rx.tail;
    uint32_t h = r->rx.head;
    NS_BARRIER();
    uint32_t n = h - t;
    if (n > NS_RX_PER_TICK)
        n = NS_RX_PER_TICK;
    for (uint32_t i = 0; i < n; i++) {
        ns_frame f;
        int e = ns_decoder_push(&r->dec, r->rx.buf[(t + i) & (NS_RX_RING - 1)], &f);
        if (e < 0 || deaf)
            continue;
        if (e != NS_OK) {
            /* A malformed stream: whatever it was meant to say, the
             * current command can no longer be trusted to be the
             * newest. Zero until the next good command. */
            r->n.malformed++;
            zero(r);
            continue;
        }
        switch (f.type) {
        case NS_HELLO:
            /* A (new) daemon: a fresh session, output at zero. Always
             * answered (the daemon names both versions when they differ),
             * but a daemon of another protocol version is not obeyed. */
            zero(r);
            r->faulted = 0;
            r->linked = f.u.hello.version == r->cfg.version;
            if (!r->linked)
                r->n.version_mismatch++;
            r->n.hellos++;
            r->hello_pending = 1;
            break;
        case NS_COMMAND:
            if (r->linked && !r->faulted)
                apply(r, &f);
            else
                r->n.unexpected++;
            break;
        case NS_HEARTBEAT:
            r->n.heartbeats_rx++;
            break;
        default:
            r->n.unexpected++;
            break;
        }
    }
    NS_BARRIER();
    r->rx.tail = t + n;
}

static void send_sample(ns_rig *r, int32_t v)
{
    ns_frame f;
    f.type = NS_SAMPLE;
    f.u.sample.t_us = r->t_us;
    f.u.sample.v = v;
    f.u.sample.i_applied = r->prev_out;
    f.u.sample.echo_us = r->echo_us;
    f.u.sample.cmd_seq = r->cmd_seq;
#ifdef NS_FAULT_INJECTION
    ns_faults *x = &r->faults;
    if (x->drop > 0 && unit(r) < x->drop) {
        r->seq++;
        r->n.dropped++;
        return;
    }
    uint8_t b[NS_MAX_WIRE + 1];
    uint32_t n = wire(r, &f, b);
    if (x->corrupt > 0 && unit(r) < x->corrupt) {
        uint32_t at = 1 + rnd(r) % (n - 1);
        b[at] ^= (uint8_t)(1u << (rnd(r) % 8));
        if (b[at] == 0)
            b[at] = 0x55;
        r->n.corrupted++;
    }
    if (x->duplicate > 0 && unit(r) < x->duplicate && tx_put(r, b, n)) {
        r->n.duplicated++;
        r->n.frames_sent++;
    }
    if (tx_put(r, b, n)) {
        r->n.frames_sent++;
        r->n.samples_sent++;
    }
    if (x->garbage > 0 && unit(r) < x->garbage) {
        uint8_t junk[64];
        uint32_t len = 1 + rnd(r) % 64;
        for (uint32_t i = 0; i < len; i++)
            junk[i] = (uint8_t)rnd(r);
        if (tx_put(r, junk, len))
            r->n.garbage_bytes += len;
    }
#else
    uint8_t b[NS_MAX_WIRE + 1];
    uint32_t n = wire(r, &f, b);
    if (tx_put(r, b, n)) {
        r->n.frames_sent++;
        r->n.samples_sent++;
    }
#endif
}

int32_t ns_rig_tick(ns_rig *r, int32_t v)
{
    /* t_k = floor(k * 1e6 / rate), without a 64-bit division per cycle. */
    if (r->k > 0) {
        r->t_us += r->period_us;
        r->t_frac += r->period_frac;
        if (r->t_frac >= r->cfg.sample_rate_hz) {
            r->t_frac -= r->cfg.sample_rate_hz;
            r->t_us++;
        }
    }
    r->n.cycles++;
    receive(r);
    /* Validity: no newer command in time, back to zero by itself. */
    if (r->active && r->t_us >= r->expires_us) {
        if (r->out != 0)
            r->n.expired++;
        zero(r);
    }
#ifdef NS_FAULT_INJECTION
    if (r->faults.fault_at_us > 0 && r->t_us >= r->faults.fault_at_us && !r->faulted) {
        r->faults.fault_at_us = 0;
        ns_rig_fault(r, r->faults.fault_code ? r->faults.fault_code : NS_FAULT_INTERNAL, 42);
    }
#endif
    if (r->faulted)
        zero(r);
    int quiet = stalled(r);
    if (quiet)
        r->n.stalled_cycles++;
    if (r->fault_pending && !quiet) {
        ns_frame f;
        memset(&f, 0, sizeof f);
        f.type = NS_FAULT;
        f.u.fault.code = r->fault_code;
        f.u.fault.detail = r->fault_detail;
        if (send(r, &f)) {
            r->fault_pending = 0;
            r->n.faults_sent++;
        }
    }
    /* The Hello answer and a Fault are retried until queued (a full TX
     * ring refuses samples, which the daemon counts as lost, not these). */
    if (r->hello_pending && !quiet && send_hello(r))
        r->hello_pending = 0;
    if (r->linked && !quiet) {
        send_sample(r, v);
    } else if (!r->linked && r->cfg.heartbeat_us > 0 && r->t_us >= r->next_heartbeat_us) {
        ns_frame f;
        memset(&f, 0, sizeof f);
        f.type = NS_HEARTBEAT;
        f.u.heartbeat.t_us = r->t_us;
        send(r, &f);
        r->n.heartbeats_tx++;
        r->next_heartbeat_us = r->t_us + r->cfg.heartbeat_us;
    }
    /* Safety evidence: the longest the output has stayed non-zero since
     * the command that set it (bounded by the validity, max_valid_us). */
    if (r->out != 0 && r->t_us - r->cmd_t_us > r->n.hold_max_us)
        r->n.hold_max_us = (uint32_t)(r->t_us - r->cmd_t_us);
    r->prev_out = r->out;
    r->k++;
    return r->out;
}
