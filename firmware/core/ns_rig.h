/*
 * The rig's side of the protocol: Hello negotiation, the sample cycle,
 * command validity with expiry to zero, heartbeats, faults, counters.
 *
 * One context owns the protocol state: the sample cycle, ns_rig_tick(),
 * run from the sample timer's interrupt (or a host thread). Bytes cross
 * from and to the UART through two single-producer single-consumer byte
 * rings, so the UART's interrupt (or a polling loop) never touches the
 * protocol state and needs no lock:
 *
 *   UART RX (ISR/poll) --rx ring--> ns_rig_tick() --tx ring--> UART TX
 *                                        |  ^
 *                            DAC counts <-+  +- ADC counts
 *
 * No heap; an ns_rig is a few hundred bytes, statically allocated by the
 * board.
 */
#ifndef NS_RIG_H
#define NS_RIG_H

#include "ns_proto.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Ring sizes (powers of two). TX must hold a tick's worth of frames
 * (a Hello, a Sample and a Fault: 3 x 34 bytes) plus what the UART has
 * not drained yet; RX at least a few commands. */
#ifndef NS_TX_RING
#define NS_TX_RING 512u
#endif
#ifndef NS_RX_RING
#define NS_RX_RING 256u
#endif
/* At most this many received bytes are decoded per sample cycle, which
 * bounds the cycle's duration whatever arrives (the rest waits). */
#ifndef NS_RX_PER_TICK
#define NS_RX_PER_TICK 128u
#endif

/* Compiler barrier around ring index updates (single-core MCU or one
 * producer and one consumer thread on the host with -O2: the board may
 * redefine it as a hardware barrier). */
#ifndef NS_BARRIER
#if defined(__GNUC__)
#define NS_BARRIER() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#else
#define NS_BARRIER() do { } while (0)
#endif
#endif

typedef struct {
    uint8_t buf[NS_TX_RING];
    volatile uint32_t head; /* written by the producer only */
    volatile uint32_t tail; /* written by the consumer only */
} ns_tx_ring;

typedef struct {
    uint8_t buf[NS_RX_RING];
    volatile uint32_t head;
    volatile uint32_t tail;
} ns_rx_ring;

typedef struct {
    uint32_t rig_id;
    uint16_t version;        /* announced in Hello (NS_PROTO_VERSION) */
    uint32_t sample_rate_hz; /* the sample timer's rate */
    uint8_t v_unit, i_unit;  /* NS_V_UNIT_*, NS_I_UNIT_* */
    float v_scale, i_scale;  /* value of one count in those units */
    /* Firmware current limit: commands beyond +-i_limit counts are
     * clamped (and counted). A hardware limit is still required. */
    int32_t i_limit;
    /* A command's validity is cut to this (the daemon allows <= 1 s). */
    uint32_t max_valid_us;
    /* Heartbeat period while no daemon has said Hello, µs (0: none). */
    uint32_t heartbeat_us;
} ns_rig_config;

/* What the rig did (all wrap at 2^32). */
typedef struct {
    uint32_t cycles;         /* sample cycles run */
    uint32_t samples_sent;
    uint32_t frames_sent;    /* every type */
    uint32_t hellos;         /* daemon Hellos answered */
    uint32_t commands;       /* commands applied */
    uint32_t expired;        /* commands that ran out: output -> 0 by itself */
    uint32_t clamped;        /* commands beyond i_limit */
    uint32_t malformed;      /* malformed frames received: output -> 0 */
    uint32_t unexpected;     /* valid frames not taken (Command before Hello, Sample, Fault) */
    uint32_t version_mismatch; /* Hellos from a daemon of another protocol version */
    uint32_t heartbeats_rx;
    uint32_t heartbeats_tx;
    uint32_t faults_sent;
    uint32_t tx_full;        /* frames not queued: the UART was behind */
    uint32_t rx_full;        /* bytes lost: the sample cycle was behind */
    uint32_t overruns;       /* timer ticks the board missed (set by the board) */
    uint32_t hold_max_us;    /* longest non-zero output since its command, µs */
    /* Fault injection (host tests). */
    uint32_t dropped, corrupted, duplicated, garbage_bytes, stalled_cycles;
} ns_rig_counters;

/* Misbehaviour on purpose, mirroring `neurostimd rig`'s flags (compiled in
 * with NS_FAULT_INJECTION; all zero = none). */
typedef struct {
    float drop;       /* probability a Sample is not sent */
    float corrupt;    /* probability one byte of a Sample is flipped */
    float duplicate;  /* probability a Sample is sent twice */
    float garbage;    /* probability per sample of 1-64 random bytes */
    uint64_t stall_at_us, stall_us; /* silent (and deaf) for stall_us */
    uint64_t fault_at_us;           /* send a Fault frame then (0: never) */
    uint16_t fault_code;
    uint32_t seed;
} ns_faults;

typedef struct {
    ns_rig_config cfg;
    ns_decoder dec;
    ns_tx_ring tx;
    ns_rx_ring rx;
    uint64_t k;           /* sample index */
    uint64_t t_us;        /* rig clock at the current sample */
    uint32_t period_us, period_frac, t_frac;
    uint16_t seq;         /* our next frame's sequence number */
    uint8_t linked;       /* a daemon said Hello */
    uint8_t active;       /* a command is in force */
    uint8_t faulted;      /* a Fault was raised: output held at zero until the next Hello */
    uint8_t fault_pending;
    uint8_t hello_pending;
    uint16_t fault_code;
    uint32_t fault_detail;
    int32_t out;          /* current driven now, counts */
    int32_t prev_out;     /* current over the interval ending at this sample */
    uint64_t expires_us;
    uint64_t cmd_t_us;    /* when the command in force was applied */
    uint64_t echo_us;
    uint16_t cmd_seq;
    uint64_t next_heartbeat_us;
    ns_faults faults;
    uint32_t rng;
    ns_rig_counters n;
} ns_rig;

/* Output at zero, nothing linked. Call first thing after reset. */
void ns_rig_init(ns_rig *r, const ns_rig_config *cfg);

/* Raise a rig fault: output to zero at once, a Fault frame at the next
 * sample cycle, zero held until a daemon says Hello again. Call from the
 * sample cycle's context (e.g. from the board's ADC check). */
void ns_rig_fault(ns_rig *r, uint16_t code, uint32_t detail);

/* The link went away (cable pulled, pty closed): output to zero, queued
 * bytes dropped, a daemon must say Hello again. Call from the sample
 * cycle's context with the UART quiet. */
void ns_rig_link_lost(ns_rig *r);

/* One sample cycle. `v` is the ADC reading at this instant in counts of
 * v_scale. Decodes what arrived, applies the newest command (or zero on
 * expiry, a malformed stream or a fault), queues this sample, and returns
 * the current to drive until the next cycle, counts of i_scale. */
int32_t ns_rig_tick(ns_rig *r, int32_t v);

/* The UART side. RX: one producer (the UART ISR or poll loop). */
int ns_rig_rx_put(ns_rig *r, uint8_t byte); /* 0 if the ring was full */
/* Room in the RX ring (a producer that can hold bytes back, like a pty
 * or a UART with flow control, reads only this many). */
uint32_t ns_rig_rx_free(const ns_rig *r);
/* TX: one consumer. Contiguous queued bytes at *p, their count. */
uint32_t ns_rig_tx_peek(ns_rig *r, const uint8_t **p);
void ns_rig_tx_consume(ns_rig *r, uint32_t n);
uint32_t ns_rig_tx_pending(const ns_rig *r);

#ifdef __cplusplus
}
#endif
#endif
