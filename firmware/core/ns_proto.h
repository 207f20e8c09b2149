/*
 * neurostimd bench-rig wire protocol, version 1 (docs/protocol.md):
 * CRC-16/IBM-3740, COBS framing, the five frame types, and a streaming
 * decoder with a fixed buffer.
 *
 * Portable C99: no heap, no OS, no libc beyond <stdint.h>/<stddef.h>/
 * <string.h> (memcpy/memset). Endianness-independent (bytes are assembled
 * explicitly), so it runs unchanged on a little-endian Cortex-M and on the
 * host.
 */
#ifndef NS_PROTO_H
#define NS_PROTO_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define NS_PROTO_VERSION 1u

enum ns_frame_type {
    NS_HELLO = 1,
    NS_SAMPLE = 2,
    NS_COMMAND = 3,
    NS_HEARTBEAT = 4,
    NS_FAULT = 5
};

/* Type, sequence and CRC around every payload. */
#define NS_OVERHEAD 5u
/* Longest frame before COBS (a Sample: 5 + 26). */
#define NS_MAX_FRAME 31u
/* Longest encoded frame with its 0x00 delimiter (COBS adds one byte). */
#define NS_MAX_WIRE (NS_MAX_FRAME + 2u)
/* Decoder buffer: more bytes than this before a delimiter is not a frame. */
#define NS_DECODE_BUF 40u

/* Unit codes in a Hello. */
#define NS_V_UNIT_MV 1u
#define NS_I_UNIT_UA_CM2 1u
#define NS_I_UNIT_NA 2u
#define NS_I_UNIT_PA 3u

/* Fault codes. */
#define NS_FAULT_OVERCURRENT 1u
#define NS_FAULT_COMPLIANCE 2u
#define NS_FAULT_INTERNAL 3u
#define NS_FAULT_OVERRANGE 4u

typedef struct {
    uint16_t version;
    uint32_t rig_id;
    uint32_t sample_rate_hz;
    uint8_t v_unit;
    uint8_t i_unit;
    float v_scale; /* value of one count, in the voltage unit */
    float i_scale; /* value of one count, in the current unit */
} ns_hello;

typedef struct {
    uint64_t t_us;      /* rig clock at the sample */
    int32_t v;          /* membrane potential, counts */
    int32_t i_applied;  /* current over the interval ending here, counts */
    uint64_t echo_us;   /* daemon_us of the last command applied (0: none) */
    uint16_t cmd_seq;   /* that command's sequence number */
} ns_sample;

typedef struct {
    uint16_t answers;      /* sequence number of the sample answered */
    int32_t amplitude;     /* counts of i_scale */
    uint32_t valid_for_us; /* back to zero without a newer command */
    uint64_t daemon_us;    /* daemon clock when sent */
} ns_command;

typedef struct {
    uint8_t type; /* enum ns_frame_type */
    uint16_t seq;
    union {
        ns_hello hello;
        ns_sample sample;
        ns_command command;
        struct { uint64_t t_us; } heartbeat;
        struct { uint16_t code; uint32_t detail; } fault;
    } u;
} ns_frame;

/* Why the bytes before a delimiter were not a frame. */
typedef enum {
    NS_OK = 0,
    NS_ERR_OVERSIZED = 1,
    NS_ERR_COBS = 2,
    NS_ERR_SHORT = 3,
    NS_ERR_CRC = 4,
    NS_ERR_UNKNOWN_TYPE = 5,
    NS_ERR_LENGTH = 6
} ns_err;

/* Counts of what a decoder has seen (the daemon's DecodeStats). */
typedef struct {
    uint32_t frames;
    uint32_t oversized;
    uint32_t bad_cobs;
    uint32_t short_frames;
    uint32_t bad_crc;
    uint32_t unknown_type;
    uint32_t bad_length;
    uint32_t idle;
} ns_decode_stats;

typedef struct {
    uint8_t buf[NS_DECODE_BUF];
    uint8_t len;
    uint8_t overflow;
    ns_decode_stats stats;
} ns_decoder;

/* Payload bytes of a frame type, 0 for an unknown type. */
size_t ns_payload_len(uint8_t type);

/* CRC-16/IBM-3740 (poly 0x1021, init 0xFFFF, no reflection, no final XOR). */
uint16_t ns_crc16(const uint8_t *data, size_t len);

/* COBS-encode `len` (<= 254) bytes into `out` (room for len + 1); returns
 * the encoded length (no delimiter). */
size_t ns_cobs_encode(const uint8_t *in, size_t len, uint8_t *out);

/* COBS-decode `len` bytes (no delimiter) into `out` (room for len);
 * returns the decoded length, or -1 if the encoding is invalid. */
int ns_cobs_decode(const uint8_t *in, size_t len, uint8_t *out);

/* The raw frame (before COBS) into `out` (NS_MAX_FRAME bytes); returns its
 * length, 0 for an unknown type. */
size_t ns_encode_raw(const ns_frame *f, uint8_t out[NS_MAX_FRAME]);

/* The frame as sent on the wire: COBS-encoded and 0x00-terminated, into
 * `out` (NS_MAX_WIRE bytes); returns its length, 0 for an unknown type. */
size_t ns_encode(const ns_frame *f, uint8_t out[NS_MAX_WIRE]);

/* Parse a raw (COBS-decoded) frame. */
ns_err ns_decode_raw(const uint8_t *raw, size_t len, ns_frame *f);

void ns_decoder_init(ns_decoder *d);
/* Forget a partial frame (the statistics stay). */
void ns_decoder_reset(ns_decoder *d);
/* Frames rejected for any reason. */
uint32_t ns_decode_errors(const ns_decode_stats *s);

/* What a delimiter ends (ns_decoder_push's slow path). */
int ns_decoder_end(ns_decoder *d, ns_frame *f);

/* Feed one byte. Returns -1 while no frame has ended (including idle
 * 0x00 fill), NS_OK with *f filled at a good frame, or the ns_err of a
 * malformed one. The decoder resynchronises at the next 0x00. Inline: a
 * byte that is not a delimiter costs a compare and a store. */
static inline int ns_decoder_push(ns_decoder *d, uint8_t byte, ns_frame *f)
{
    if (byte != 0) {
        if (d->len < NS_DECODE_BUF)
            d->buf[d->len++] = byte;
        else
            d->overflow = 1;
        return -1;
    }
    return ns_decoder_end(d, f);
}

#ifdef __cplusplus
}
#endif
#endif
