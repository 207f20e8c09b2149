/* The wire protocol: see ns_proto.h and docs/protocol.md. */
#include "ns_proto.h"

#include <string.h>

size_t ns_payload_len(uint8_t type)
{
    switch (type) {
    case NS_HELLO: return 20;
    case NS_SAMPLE: return 26;
    case NS_COMMAND: return 18;
    case NS_HEARTBEAT: return 8;
    case NS_FAULT: return 6;
    default: return 0;
    }
}

/* Table-driven CRC-16/IBM-3740: 512 bytes of flash, one lookup per byte. */
static const uint16_t crc_table[256] = {
    0x0000, 0x1021, 0x2042, 0x3063, 0x4084, 0x50a5, 0x60c6, 0x70e7,
    0x8108, 0x9129, 0xa14a, 0xb16b, 0xc18c, 0xd1ad, 0xe1ce, 0xf1ef,
    0x1231, 0x0210, 0x3273, 0x2252, 0x52b5, 0x4294, 0x72f7, 0x62d6,
    0x9339, 0x8318, 0xb37b, 0xa35a, 0xd3bd, 0xc39c, 0xf3ff, 0xe3de,
    0x2462, 0x3443, 0x0420, 0x1401, 0x64e6, 0x74c7, 0x44a4, 0x5485,
    0xa56a, 0xb54b, 0x8528, 0x9509, 0xe5ee, 0xf5cf, 0xc5ac, 0xd58d,
    0x3653, 0x2672, 0x1611, 0x0630, 0x76d7, 0x66f6, 0x5695, 0x46b4,
    0xb75b, 0xa77a, 0x9719, 0x8738, 0xf7df, 0xe7fe, 0xd79d, 0xc7bc,
    0x48c4, 0x58e5, 0x6886, 0x78a7, 0x0840, 0x1861, 0x2802, 0x3823,
    0xc9cc, 0xd9ed, 0xe98e, 0xf9af, 0x8948, 0x9969, 0xa90a, 0xb92b,
    0x5af5, 0x4ad4, 0x7ab7, 0x6a96, 0x1a71, 0x0a50, 0x3a33, 0x2a12,
    0xdbfd, 0xcbdc, 0xfbbf, 0xeb9e, 0x9b79, 0x8b58, 0xbb3b, 0xab1a,
    0x6ca6, 0x7c87, 0x4ce4, 0x5cc5, 0x2c22, 0x3c03, 0x0c60, 0x1c41,
    0xedae, 0xfd8f, 0xcdec, 0xddcd, 0xad2a, 0xbd0b, 0x8d68, 0x9d49,
    0x7e97, 0x6eb6, 0x5ed5, 0x4ef4, 0x3e13, 0x2e32, 0x1e51, 0x0e70,
    0xff9f, 0xefbe, 0xdfdd, 0xcffc, 0xbf1b, 0xaf3a, 0x9f59, 0x8f78,
    0x9188, 0x81a9, 0xb1ca, 0xa1eb, 0xd10c, 0xc12d, 0xf14e, 0xe16f,
    0x1080, 0x00a1, 0x30c2, 0x20e3, 0x5004, 0x4025, 0x7046, 0x6067,
    0x83b9, 0x9398, 0xa3fb, 0xb3da, 0xc33d, 0xd31c, 0xe37f, 0xf35e,
    0x02b1, 0x1290, 0x22f3, 0x32d2, 0x4235, 0x5214, 0x6277, 0x7256,
    0xb5ea, 0xa5cb, 0x95a8, 0x8589, 0xf56e, 0xe54f, 0xd52c, 0xc50d,
    0x34e2, 0x24c3, 0x14a0, 0x0481, 0x7466, 0x6447, 0x5424, 0x4405,
    0xa7db, 0xb7fa, 0x8799, 0x97b8, 0xe75f, 0xf77e, 0xc71d, 0xd73c,
    0x26d3, 0x36f2, 0x0691, 0x16b0, 0x6657, 0x7676, 0x4615, 0x5634,
    0xd94c, 0xc96d, 0xf90e, 0xe92f, 0x99c8, 0x89e9, 0xb98a, 0xa9ab,
    0x5844, 0x4865, 0x7806, 0x6827, 0x18c0, 0x08e1, 0x3882, 0x28a3,
    0xcb7d, 0xdb5c, 0xeb3f, 0xfb1e, 0x8bf9, 0x9bd8, 0xabbb, 0xbb9a,
    0x4a75, 0x5a54, 0x6a37, 0x7a16, 0x0af1, 0x1ad0, 0x2ab3, 0x3a92,
    0xfd2e, 0xed0f, 0xdd6c, 0xcd4d, 0xbdaa, 0xad8b, 0x9de8, 0x8dc9,
    0x7c26, 0x6c07, 0x5c64, 0x4c45, 0x3ca2, 0x2c83, 0x1ce0, 0x0cc1,
    0xef1f, 0xff3e, 0xcf5d, 0xdf7c, 0xaf9b, 0xbfba, 0x8fd9, 0x9ff8,
    0x6e17, 0x7e36, 0x4e55, 0x5e74, 0x2e93, 0x3eb2, 0x0ed1, 0x1ef0,
};

uint16_t ns_crc16(const uint8_t *data, size_t len)
{
    uint16_t crc = 0xFFFF;
    for (size_t i = 0; i < len; i++)
        crc = (uint16_t)((crc << 8) ^ crc_table[((crc >> 8) ^ data[i]) & 0xFF]);
    return crc;
}

size_t ns_cobs_encode(const uint8_t *in, size_t len, uint8_t *out)
{
    size_t code_at = 0, o = 1;
    uint8_t code = 1;
    for (size_t i = 0; i < len; i++) {
        if (in[i] == 0) {
            out[code_at] = code;
            code_at = o++;
            code = 1;
        } else {
            out[o++] = in[i];
            if (++code == 0xFF) {
                out[code_at] = code;
                code_at = o++;
                code = 1;
            }
        }
    }
    out[code_at] = code;
    return o;
}

int ns_cobs_decode(const uint8_t *in, size_t len, uint8_t *out)
{
    size_t i = 0, o = 0;
    while (i < len) {
        uint8_t code = in[i++];
        if (code == 0)
            return -1;
        size_t n = (size_t)code - 1;
        if (n > len - i)
            return -1;
        memcpy(out + o, in + i, n);
        o += n;
        i += n;
        if (code != 0xFF && i < len)
            out[o++] = 0;
    }
    return (int)o;
}

/* Little-endian writers and readers, byte by byte (any host order). */
static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static void put64(uint8_t *p, uint64_t v) { put32(p, (uint32_t)v); put32(p + 4, (uint32_t)(v >> 32)); }
static void putf(uint8_t *p, float f) { uint32_t u; memcpy(&u, &f, 4); put32(p, u); }
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) | ((uint64_t)get32(p + 4) << 32); }
static float getf(const uint8_t *p) { uint32_t u = get32(p); float f; memcpy(&f, &u, 4); return f; }

size_t ns_encode_raw(const ns_frame *f, uint8_t out[NS_MAX_FRAME])
{
    size_t n = ns_payload_len(f->type);
    if (n == 0)
        return 0;
    uint8_t *p = out + 3;
    out[0] = f->type;
    put16(out + 1, f->seq);
    switch (f->type) {
    case NS_HELLO:
        put16(p, f->u.hello.version);
        put32(p + 2, f->u.hello.rig_id);
        put32(p + 6, f->u.hello.sample_rate_hz);
        p[10] = f->u.hello.v_unit;
        p[11] = f->u.hello.i_unit;
        putf(p + 12, f->u.hello.v_scale);
        putf(p + 16, f->u.hello.i_scale);
        break;
    case NS_SAMPLE:
        put64(p, f->u.sample.t_us);
        put32(p + 8, (uint32_t)f->u.sample.v);
        put32(p + 12, (uint32_t)f->u.sample.i_applied);
        put64(p + 16, f->u.sample.echo_us);
        put16(p + 24, f->u.sample.cmd_seq);
        break;
    case NS_COMMAND:
        put16(p, f->u.command.answers);
        put32(p + 2, (uint32_t)f->u.command.amplitude);
        put32(p + 6, f->u.command.valid_for_us);
        put64(p + 10, f->u.command.daemon_us);
        break;
    case NS_HEARTBEAT:
        put64(p, f->u.heartbeat.t_us);
        break;
    case NS_FAULT:
        put16(p, f->u.fault.code);
        put32(p + 2, f->u.fault.detail);
        break;
    }
    n += 3;
    put16(out + n, ns_crc16(out, n));
    return n + 2;
}

size_t ns_encode(const ns_frame *f, uint8_t out[NS_MAX_WIRE])
{
    uint8_t raw[NS_MAX_FRAME];
    size_t n = ns_encode_raw(f, raw);
    if (n == 0)
        return 0;
    size_t m = ns_cobs_encode(raw, n, out);
    out[m] = 0;
    return m + 1;
}

ns_err ns_decode_raw(const uint8_t *raw, size_t len, ns_frame *f)
{
    if (len < NS_OVERHEAD)
        return NS_ERR_SHORT;
    size_t body = len - 2;
    if (get16(raw + body) != ns_crc16(raw, body))
        return NS_ERR_CRC;
    size_t want = ns_payload_len(raw[0]);
    if (want == 0)
        return NS_ERR_UNKNOWN_TYPE;
    if (body - 3 != want)
        return NS_ERR_LENGTH;
    const uint8_t *p = raw + 3;
    f->type = raw[0];
    f->seq = get16(raw + 1);
    switch (f->type) {
    case NS_HELLO:
        f->u.hello.version = get16(p);
        f->u.hello.rig_id = get32(p + 2);
        f->u.hello.sample_rate_hz = get32(p + 6);
        f->u.hello.v_unit = p[10];
        f->u.hello.i_unit = p[11];
        f->u.hello.v_scale = getf(p + 12);
        f->u.hello.i_scale = getf(p + 16);
        break;
    case NS_SAMPLE:
        f->u.sample.t_us = get64(p);
        f->u.sample.v = (int32_t)get32(p + 8);
        f->u.sample.i_applied = (int32_t)get32(p + 12);
        f->u.sample.echo_us = get64(p + 16);
        f->u.sample.cmd_seq = get16(p + 24);
        break;
    case NS_COMMAND:
        f->u.command.answers = get16(p);
        f->u.command.amplitude = (int32_t)get32(p + 2);
        f->u.command.valid_for_us = get32(p + 6);
        f->u.command.daemon_us = get64(p + 10);
        break;
    case NS_HEARTBEAT:
        f->u.heartbeat.t_us = get64(p);
        break;
    case NS_FAULT:
        f->u.fault.code = get16(p);
        f->u.fault.detail = get32(p + 2);
        break;
    }
    return NS_OK;
}

void ns_decoder_init(ns_decoder *d)
{
    memset(d, 0, sizeof *d);
}

void ns_decoder_reset(ns_decoder *d)
{
    d->len = 0;
    d->overflow = 0;
}

uint32_t ns_decode_errors(const ns_decode_stats *s)
{
    return s->oversized + s->bad_cobs + s->short_frames + s->bad_crc + s->unknown_type + s->bad_length;
}

int ns_decoder_end(ns_decoder *d, ns_frame *f)
{
    size_t len = d->len;
    int overflow = d->overflow;
    ns_decoder_reset(d);
    if (overflow) {
        d->stats.oversized++;
        return NS_ERR_OVERSIZED;
    }
    if (len == 0) {
        d->stats.idle++;
        return -1;
    }
    uint8_t raw[NS_DECODE_BUF];
    int n = ns_cobs_decode(d->buf, len, raw);
    if (n < 0) {
        d->stats.bad_cobs++;
        return NS_ERR_COBS;
    }
    ns_err e = ns_decode_raw(raw, (size_t)n, f);
    switch (e) {
    case NS_OK: d->stats.frames++; break;
    case NS_ERR_SHORT: d->stats.short_frames++; break;
    case NS_ERR_CRC: d->stats.bad_crc++; break;
    case NS_ERR_UNKNOWN_TYPE: d->stats.unknown_type++; break;
    case NS_ERR_LENGTH: d->stats.bad_length++; break;
    default: break;
    }
    return (int)e;
}
