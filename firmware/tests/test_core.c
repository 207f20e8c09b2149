/*
 * Host tests of the firmware core: the byte-level examples of
 * docs/protocol.md (the same vectors src/protocol.rs checks), the Rust
 * codec's unit-test cases, the rig's behaviour (Hello, commands, expiry,
 * malformed input, heartbeats, faults, sequence numbers), and a
 * random-bytes fuzz of the decoder.
 *
 * usage: test_core [docs/protocol.md] [fuzz iterations]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ns_proto.h"
#include "ns_rig.h"

static int failures, checks;
#define CHECK(c)                                                                  \
    do {                                                                          \
        checks++;                                                                 \
        if (!(c)) {                                                               \
            failures++;                                                           \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); \
        }                                                                         \
    } while (0)

static size_t hex(const char *s, uint8_t *out, size_t cap)
{
    size_t n = 0;
    while (*s && n < cap) {
        while (*s == ' ')
            s++;
        if (!*s || *s == '\n')
            break;
        out[n++] = (uint8_t)strtoul(s, (char **)&s, 16);
    }
    return n;
}

/* docs/protocol.md's examples, copied from the document. */
static const char *doc_raw[5] = {
    "01 00 00 01 00 07 00 00 00 10 27 00 00 01 01 6f 12 83 3a 6f 12 83 3a 45 e9",
    "02 01 00 64 00 00 00 00 00 00 00 18 02 ff ff 00 00 00 00 00 00 00 00 00 00 00 00 00 00 7a a4",
    "03 01 00 01 00 24 fa ff ff d0 07 00 00 87 d6 12 00 00 00 00 00 cf 16",
    "04 02 00 40 42 0f 00 00 00 00 00 1e d5",
    "05 03 00 02 00 2a 00 00 00 6e 73",
};
static const char *doc_wire[5] = {
    "02 01 01 02 01 02 07 01 01 03 10 27 01 0d 01 01 6f 12 83 3a 6f 12 83 3a 45 e9 00",
    "03 02 01 02 64 01 01 01 01 01 01 05 18 02 ff ff 01 01 01 01 01 01 01 01 01 01 01 01 01 03 7a a4 00",
    "03 03 01 02 01 07 24 fa ff ff d0 07 01 04 87 d6 12 01 01 01 01 03 cf 16 00",
    "03 04 02 04 40 42 0f 01 01 01 01 03 1e d5 00",
    "03 05 03 02 02 02 2a 01 01 03 6e 73 00",
};

static ns_frame doc_frame(int i)
{
    ns_frame f;
    memset(&f, 0, sizeof f);
    switch (i) {
    case 0:
        f.type = NS_HELLO;
        f.seq = 0;
        f.u.hello = (ns_hello){1, 7, 10000, 1, 1, 0.001f, 0.001f};
        break;
    case 1:
        f.type = NS_SAMPLE;
        f.seq = 1;
        f.u.sample = (ns_sample){100, -65000, 0, 0, 0};
        break;
    case 2:
        f.type = NS_COMMAND;
        f.seq = 1;
        f.u.command = (ns_command){1, -1500, 2000, 1234567};
        break;
    case 3:
        f.type = NS_HEARTBEAT;
        f.seq = 2;
        f.u.heartbeat.t_us = 1000000;
        break;
    default:
        f.type = NS_FAULT;
        f.seq = 3;
        f.u.fault.code = 2;
        f.u.fault.detail = 42;
        break;
    }
    return f;
}

static int frames_equal(const ns_frame *a, const ns_frame *b)
{
    uint8_t x[NS_MAX_FRAME], y[NS_MAX_FRAME];
    size_t n = ns_encode_raw(a, x), m = ns_encode_raw(b, y);
    return n == m && n > 0 && memcmp(x, y, n) == 0;
}

/* Feed bytes; returns the number of good frames, the last one in *last. */
static int feed(ns_decoder *d, const uint8_t *b, size_t n, ns_frame *last, int *errors)
{
    int good = 0;
    for (size_t i = 0; i < n; i++) {
        ns_frame f;
        int e = ns_decoder_push(d, b[i], &f);
        if (e == NS_OK) {
            good++;
            if (last)
                *last = f;
        } else if (e > 0 && errors) {
            (*errors)++;
        }
    }
    return good;
}

static void test_crc(void)
{
    CHECK(ns_crc16((const uint8_t *)"123456789", 9) == 0x29B1);
}

static void test_doc_vectors(const char *doc_path)
{
    for (int i = 0; i < 5; i++) {
        uint8_t want_raw[64], want_wire[64], raw[NS_MAX_FRAME], wire[NS_MAX_WIRE];
        size_t nr = hex(doc_raw[i], want_raw, sizeof want_raw);
        size_t nw = hex(doc_wire[i], want_wire, sizeof want_wire);
        ns_frame f = doc_frame(i);
        size_t n = ns_encode_raw(&f, raw);
        CHECK(n == nr && memcmp(raw, want_raw, n) == 0);
        size_t m = ns_encode(&f, wire);
        CHECK(m == nw && memcmp(wire, want_wire, m) == 0);
        ns_decoder d;
        ns_decoder_init(&d);
        ns_frame got;
        CHECK(feed(&d, want_wire, nw, &got, NULL) == 1);
        CHECK(frames_equal(&got, &f));
        CHECK(d.stats.frames == 1 && ns_decode_errors(&d.stats) == 0);
    }
    if (!doc_path)
        return;
    /* And the copies above are what the document says today. */
    FILE *fp = fopen(doc_path, "r");
    CHECK(fp != NULL);
    if (!fp)
        return;
    char line[512];
    int raws = 0, wires = 0;
    while (fgets(line, sizeof line, fp)) {
        line[strcspn(line, "\n")] = 0;
        if (strncmp(line, "raw:  ", 6) == 0) {
            CHECK(raws < 5 && strcmp(line + 6, doc_raw[raws]) == 0);
            raws++;
        } else if (strncmp(line, "wire: ", 6) == 0) {
            CHECK(wires < 5 && strcmp(line + 6, doc_wire[wires]) == 0);
            wires++;
        }
    }
    fclose(fp);
    CHECK(raws == 5 && wires == 5);
}

/* src/protocol.rs's all_frames(): every type, extreme values. */
static void test_round_trips(void)
{
    ns_frame fs[5];
    memset(fs, 0, sizeof fs);
    fs[0] = doc_frame(0);
    fs[1] = doc_frame(1);
    fs[2].type = NS_COMMAND;
    fs[2].seq = 65535;
    fs[2].u.command = (ns_command){1, -1500, 2000, UINT64_MAX};
    fs[3].type = NS_HEARTBEAT;
    fs[3].seq = 3;
    fs[4].type = NS_FAULT;
    fs[4].seq = 4;
    fs[4].u.fault.code = 2;
    fs[4].u.fault.detail = 0xdeadbeefu;
    for (int i = 0; i < 5; i++) {
        uint8_t wire[NS_MAX_WIRE];
        size_t n = ns_encode(&fs[i], wire);
        CHECK(n > 0 && wire[n - 1] == 0);
        for (size_t j = 0; j + 1 < n; j++)
            CHECK(wire[j] != 0);
        ns_decoder d;
        ns_decoder_init(&d);
        ns_frame got;
        CHECK(feed(&d, wire, n, &got, NULL) == 1 && frames_equal(&got, &fs[i]));
        CHECK(got.seq == fs[i].seq && got.type == fs[i].type);
    }
    /* Field values survive (decode, not just re-encode). */
    uint8_t wire[NS_MAX_WIRE];
    size_t n = ns_encode(&fs[2], wire);
    ns_decoder d;
    ns_decoder_init(&d);
    ns_frame got;
    feed(&d, wire, n, &got, NULL);
    CHECK(got.u.command.daemon_us == UINT64_MAX && got.u.command.amplitude == -1500);
    CHECK(got.u.command.valid_for_us == 2000 && got.u.command.answers == 1);
    n = ns_encode(&fs[0], wire);
    feed(&d, wire, n, &got, NULL);
    CHECK(got.u.hello.v_scale == 0.001f && got.u.hello.sample_rate_hz == 10000);
}

static void test_flipped_bit(void)
{
    ns_frame s = doc_frame(1);
    s.seq = 5;
    uint8_t wire[NS_MAX_WIRE], stream[2 * NS_MAX_WIRE];
    size_t n = ns_encode(&s, wire);
    memcpy(stream, wire, n);
    stream[4] ^= 0x10;
    memcpy(stream + n, wire, n);
    ns_decoder d;
    ns_decoder_init(&d);
    int errors = 0;
    ns_frame got;
    CHECK(feed(&d, stream, 2 * n, &got, &errors) == 1);
    CHECK(errors == 1 && ns_decode_errors(&d.stats) == 1);
    CHECK(d.stats.bad_crc + d.stats.bad_cobs == 1);
    CHECK(frames_equal(&got, &s));
}

static void test_garbage_oversized(void)
{
    ns_decoder d;
    ns_decoder_init(&d);
    ns_frame f;
    for (uint32_t k = 0; k < 100000; k++)
        if (ns_decoder_push(&d, (uint8_t)(k % 255 + 1), &f) != -1) { CHECK(0); break; }
    CHECK(ns_decoder_push(&d, 0, &f) == NS_ERR_OVERSIZED);
    ns_frame s = doc_frame(1);
    s.seq = 9;
    uint8_t wire[NS_MAX_WIRE];
    size_t n = ns_encode(&s, wire);
    ns_frame got;
    CHECK(feed(&d, wire, n, &got, NULL) == 1 && frames_equal(&got, &s));
    CHECK(d.stats.oversized == 1);
}

static void test_wrong_lengths_and_types(void)
{
    ns_frame s = doc_frame(1);
    uint8_t raw[NS_MAX_FRAME];
    size_t n = ns_encode_raw(&s, raw);
    ns_frame f;
    raw[0] = 9;
    uint16_t crc = ns_crc16(raw, n - 2);
    raw[n - 2] = (uint8_t)crc;
    raw[n - 1] = (uint8_t)(crc >> 8);
    CHECK(ns_decode_raw(raw, n, &f) == NS_ERR_UNKNOWN_TYPE);
    raw[0] = NS_HEARTBEAT;
    crc = ns_crc16(raw, n - 2);
    raw[n - 2] = (uint8_t)crc;
    raw[n - 1] = (uint8_t)(crc >> 8);
    CHECK(ns_decode_raw(raw, n, &f) == NS_ERR_LENGTH);
    uint8_t two[2] = {1, 2};
    CHECK(ns_decode_raw(two, 2, &f) == NS_ERR_SHORT);
    /* Bad COBS: a code byte pointing past the end. */
    ns_decoder d;
    ns_decoder_init(&d);
    uint8_t bad[3] = {0x05, 0x11, 0x00};
    CHECK(feed(&d, bad, 3, NULL, NULL) == 0 && d.stats.bad_cobs == 1);
}

static void test_idle(void)
{
    ns_decoder d;
    ns_decoder_init(&d);
    uint8_t z[3] = {0, 0, 0};
    feed(&d, z, 3, NULL, NULL);
    CHECK(d.stats.idle == 3 && ns_decode_errors(&d.stats) == 0);
}

/* ---- the rig ---- */

static ns_rig rig;

static ns_rig_config test_cfg(void)
{
    ns_rig_config c = {
        .rig_id = 18, .version = 1, .sample_rate_hz = 10000, .v_unit = 1, .i_unit = 1,
        .v_scale = 0.001f, .i_scale = 0.001f, .i_limit = 50000, .max_valid_us = 1000000,
        .heartbeat_us = 250000,
    };
    return c;
}

static void host_send(ns_rig *r, ns_frame *f)
{
    uint8_t w[NS_MAX_WIRE];
    size_t n = ns_encode(f, w);
    ns_rig_rx_put(r, 0);
    for (size_t i = 0; i < n; i++)
        ns_rig_rx_put(r, w[i]);
}

/* Decode everything the rig queued; count by type, keep the last of each. */
static ns_decoder host_dec;
static ns_frame last[6];
static int ngot[6];
static void host_drain(ns_rig *r)
{
    const uint8_t *p;
    uint32_t n;
    while ((n = ns_rig_tx_peek(r, &p)) > 0) {
        for (uint32_t i = 0; i < n; i++) {
            ns_frame f;
            if (ns_decoder_push(&host_dec, p[i], &f) == NS_OK && f.type <= 5) {
                ngot[f.type]++;
                last[f.type] = f;
            }
        }
        ns_rig_tx_consume(r, n);
    }
}

static void command(ns_rig *r, uint16_t seq, int32_t amp, uint32_t valid, uint64_t daemon_us)
{
    ns_frame c;
    memset(&c, 0, sizeof c);
    c.type = NS_COMMAND;
    c.seq = seq;
    c.u.command = (ns_command){0, amp, valid, daemon_us};
    host_send(r, &c);
}

static void test_rig(void)
{
    ns_rig_config cfg = test_cfg();
    ns_rig_init(&rig, &cfg);
    ns_decoder_init(&host_dec);
    memset(ngot, 0, sizeof ngot);
    /* Before a Hello: heartbeats only (one now, the next after 250 ms), no samples. */
    for (int k = 0; k < 2600; k++)
        if (ns_rig_tick(&rig, -65000) != 0) { CHECK(0); break; }
    host_drain(&rig);
    CHECK(ngot[NS_HEARTBEAT] == 2 && ngot[NS_SAMPLE] == 0);
    /* A command before Hello is not applied. */
    command(&rig, 0, 1000, 2000, 5);
    CHECK(ns_rig_tick(&rig, 0) == 0);
    CHECK(rig.n.unexpected == 1);
    /* Hello: the answer carries the configuration, then samples flow. */
    ns_frame h;
    memset(&h, 0, sizeof h);
    h.type = NS_HELLO;
    h.u.hello.version = 1;
    host_send(&rig, &h);
    CHECK(ns_rig_tick(&rig, -65000) == 0);
    host_drain(&rig);
    CHECK(ngot[NS_HELLO] == 1 && ngot[NS_SAMPLE] == 1);
    CHECK(last[NS_HELLO].u.hello.version == 1 && last[NS_HELLO].u.hello.sample_rate_hz == 10000);
    CHECK(last[NS_HELLO].u.hello.rig_id == 18 && last[NS_HELLO].u.hello.v_scale == 0.001f);
    /* Sequence numbers: +1 per frame of any type. */
    CHECK(last[NS_SAMPLE].seq == (uint16_t)(last[NS_HELLO].seq + 1));
    CHECK(last[NS_SAMPLE].u.sample.v == -65000 && last[NS_SAMPLE].u.sample.echo_us == 0);
    uint64_t t_prev = last[NS_SAMPLE].u.sample.t_us;
    CHECK(ns_rig_tick(&rig, -64000) == 0);
    host_drain(&rig);
    CHECK(last[NS_SAMPLE].u.sample.t_us == t_prev + 100);
    /* A command applies from the next cycle, is echoed, and reported as
     * applied over the interval ending at the following sample. */
    command(&rig, 77, 1500, 2000, 123456);
    CHECK(ns_rig_tick(&rig, 0) == 1500);
    host_drain(&rig);
    CHECK(last[NS_SAMPLE].u.sample.echo_us == 123456 && last[NS_SAMPLE].u.sample.cmd_seq == 77);
    CHECK(last[NS_SAMPLE].u.sample.i_applied == 0);
    CHECK(ns_rig_tick(&rig, 0) == 1500);
    host_drain(&rig);
    CHECK(last[NS_SAMPLE].u.sample.i_applied == 1500);
    /* Validity: 2000 us = 20 cycles after the command's cycle, then zero. */
    int k = 2;
    while (ns_rig_tick(&rig, 0) == 1500 && k < 1000) {
        host_drain(&rig);
        k++;
    }
    CHECK(k == 20);
    CHECK(rig.n.expired == 1);
    CHECK(rig.n.hold_max_us == 1900);
    /* Limits: amplitude clamped, validity cut to 1 s. */
    command(&rig, 78, -10000000, 4000000000u, 1);
    CHECK(ns_rig_tick(&rig, 0) == -50000);
    CHECK(rig.n.clamped == 1 && rig.expires_us - rig.t_us == 1000000);
    /* A malformed frame zeroes the output until the next good command. */
    uint8_t junk[5] = {0, 0x03, 0x11, 0x22, 0};
    for (int i = 0; i < 5; i++)
        ns_rig_rx_put(&rig, junk[i]);
    CHECK(ns_rig_tick(&rig, 0) == 0);
    CHECK(rig.n.malformed == 1);
    command(&rig, 79, 700, 2000, 2);
    CHECK(ns_rig_tick(&rig, 0) == 700);
    /* A Fault: zero at once, a Fault frame, zero held (commands refused)
     * until the next Hello. */
    ns_rig_fault(&rig, NS_FAULT_OVERRANGE, 9);
    CHECK(ns_rig_tick(&rig, 0) == 0);
    host_drain(&rig);
    if (ngot[NS_FAULT] != 1) fprintf(stderr, "faults %d code %u detail %u sent %u txfull %u\n", ngot[NS_FAULT], last[NS_FAULT].u.fault.code, last[NS_FAULT].u.fault.detail, rig.n.faults_sent, rig.n.tx_full);
    CHECK(ngot[NS_FAULT] == 1 && last[NS_FAULT].u.fault.code == 4 && last[NS_FAULT].u.fault.detail == 9);
    command(&rig, 80, 700, 2000, 3);
    CHECK(ns_rig_tick(&rig, 0) == 0);
    host_send(&rig, &h);
    command(&rig, 81, 700, 2000, 4);
    CHECK(ns_rig_tick(&rig, 0) == 700);
    /* A new Hello (a reconnecting daemon) zeroes the output. */
    host_send(&rig, &h);
    CHECK(ns_rig_tick(&rig, 0) == 0);
    /* A daemon of another protocol version is answered (so that it can
     * name both versions) but never obeyed. */
    host_drain(&rig);
    int hellos0 = ngot[NS_HELLO];
    ns_frame h2 = h;
    h2.u.hello.version = 2;
    host_send(&rig, &h2);
    command(&rig, 90, 700, 2000, 5);
    CHECK(ns_rig_tick(&rig, 0) == 0);
    host_drain(&rig);
    CHECK(ngot[NS_HELLO] == hellos0 + 1 && last[NS_HELLO].u.hello.version == 1);
    CHECK(rig.n.version_mismatch == 1 && !rig.linked && rig.n.commands == 4);
    host_send(&rig, &h);
    CHECK(ns_rig_tick(&rig, 0) == 0 && rig.linked);
    /* The TX ring never takes a partial frame: with nobody draining,
     * frames are refused whole and counted. */
    uint32_t full0 = rig.n.tx_full;
    for (int i = 0; i < 100; i++)
        ns_rig_tick(&rig, 0);
    CHECK(rig.n.tx_full > full0);
    host_drain(&rig);
    uint32_t err0 = ns_decode_errors(&host_dec.stats);
    for (int i = 0; i < 10; i++) {
        ns_rig_tick(&rig, 0);
        host_drain(&rig);
    }
    CHECK(ns_decode_errors(&host_dec.stats) == err0);
    /* A flood of received garbage: at most NS_RX_PER_TICK bytes per cycle. */
    for (int i = 0; i < 1000; i++)
        ns_rig_rx_put(&rig, (uint8_t)(i * 7 + 1));
    uint32_t head = rig.rx.head, tail = rig.rx.tail;
    CHECK(head - tail == NS_RX_RING);
    ns_rig_tick(&rig, 0);
    CHECK(rig.rx.tail - tail == NS_RX_PER_TICK);
    CHECK(rig.n.rx_full == 1000 - NS_RX_RING);
}

/* ---- fuzz ---- */

static uint64_t rs = 0x243F6A8885A308D3ull;
static uint32_t r32(void)
{
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return (uint32_t)(rs >> 16);
}

static void test_fuzz(long iters)
{
    ns_decoder d;
    ns_decoder_init(&d);
    long ends = 0, frames = 0, errors = 0;
    uint8_t buf[128];
    for (long it = 0; it < iters; it++) {
        size_t n = r32() % sizeof buf;
        int mode = (int)(r32() % 4);
        if (mode == 3) {
            /* Any type byte and length with a valid CRC: the decoder must
             * sort out unknown types and wrong lengths. */
            uint8_t raw[40];
            size_t len = 3 + r32() % 34;
            for (size_t i = 0; i < len; i++)
                raw[i] = (uint8_t)r32();
            if (r32() % 2)
                raw[0] = (uint8_t)(1 + r32() % 5);
            uint16_t c = ns_crc16(raw, len);
            raw[len] = (uint8_t)c;
            raw[len + 1] = (uint8_t)(c >> 8);
            n = ns_cobs_encode(raw, len + 2, buf);
            buf[n++] = 0;
        } else if (mode == 0) {
            /* Random bytes, zeros as common as any. */
            for (size_t i = 0; i < n; i++)
                buf[i] = (uint8_t)r32();
        } else {
            /* A valid frame of a random type, mutated. */
            ns_frame f;
            memset(&f, 0, sizeof f);
            f.type = (uint8_t)(1 + r32() % 5);
            f.seq = (uint16_t)r32();
            uint8_t *p = (uint8_t *)&f.u;
            for (size_t i = 0; i < sizeof f.u; i++)
                p[i] = (uint8_t)r32();
            n = ns_encode(&f, buf);
            int flips = 1 + (int)(r32() % 3);
            for (int j = 0; j < flips; j++) {
                size_t at = r32() % n;
                if (mode == 1)
                    buf[at] ^= (uint8_t)(1u << (r32() % 8));
                else
                    buf[at] = (uint8_t)r32();
            }
            if (r32() % 4 == 0)
                n = r32() % (n + 1); /* truncated */
        }
        for (size_t i = 0; i < n; i++) {
            ns_frame f;
            int e = ns_decoder_push(&d, buf[i], &f);
            if (buf[i] == 0 && e != -1)
                ends++;
            if (e == NS_OK) {
                frames++;
                /* A frame that decodes re-encodes to valid bytes. */
                uint8_t raw[NS_MAX_FRAME];
                if (ns_encode_raw(&f, raw) == 0) {
                    CHECK(0);
                    return;
                }
            } else if (e > 0) {
                errors++;
            }
            if (buf[i] != 0 && e != -1) {
                CHECK(0); /* only a delimiter ends a frame */
                return;
            }
        }
    }
    CHECK((long)d.stats.frames == frames);
    CHECK((long)ns_decode_errors(&d.stats) == errors);
    CHECK(frames + errors == ends);
    /* After any of it, a good frame still decodes. */
    ns_frame s = doc_frame(1);
    uint8_t wire[NS_MAX_WIRE + 1];
    wire[0] = 0;
    size_t m = ns_encode(&s, wire + 1);
    ns_frame got;
    CHECK(feed(&d, wire, m + 1, &got, NULL) == 1 && frames_equal(&got, &s));
    printf("fuzz: %ld buffers, %ld frames ended, %ld good, %ld rejected "
           "(oversized %u, cobs %u, short %u, crc %u, type %u, length %u)\n",
           iters, ends, frames, errors, d.stats.oversized, d.stats.bad_cobs, d.stats.short_frames,
           d.stats.bad_crc, d.stats.unknown_type, d.stats.bad_length);
    /* The rig's own receive path under garbage: never drives current. */
    ns_rig_config cfg = test_cfg();
    ns_rig_init(&rig, &cfg);
    long nonzero = 0;
    for (long it = 0; it < iters / 10; it++) {
        for (int i = 0; i < 40; i++)
            ns_rig_rx_put(&rig, (uint8_t)(r32() % 4 ? r32() : 0));
        if (ns_rig_tick(&rig, 0) != 0)
            nonzero++;
        const uint8_t *p;
        uint32_t k;
        while ((k = ns_rig_tx_peek(&rig, &p)) > 0)
            ns_rig_tx_consume(&rig, k);
    }
    /* Random bytes essentially never form a Hello and a Command with valid
     * CRCs in sequence; if they did, expiry would still end it. */
    CHECK(nonzero < 10);
}

/* tests/protocol_fuzz.rs's second property: valid frames behind a
 * delimiter decode, in order, whatever noise surrounds them. */
static void test_frames_in_noise(long iters)
{
    static uint8_t stream[20 * (200 + 1 + NS_MAX_WIRE) + 100];
    ns_frame want[20];
    long total = 0;
    for (long it = 0; it < iters; it++) {
        size_t n = 0;
        int items = 1 + (int)(r32() % 20);
        for (int k = 0; k < items; k++) {
            size_t noise = r32() % 200;
            for (size_t i = 0; i < noise; i++)
                stream[n++] = (uint8_t)r32();
            stream[n++] = 0;
            ns_frame f;
            memset(&f, 0, sizeof f);
            f.type = (uint8_t)(1 + r32() % 5);
            f.seq = (uint16_t)r32();
            uint8_t *p = (uint8_t *)&f.u;
            for (size_t i = 0; i < sizeof f.u; i++)
                p[i] = (uint8_t)r32();
            want[k] = f;
            n += ns_encode(&f, stream + n);
        }
        size_t tail = r32() % 100;
        for (size_t i = 0; i < tail; i++)
            stream[n++] = (uint8_t)r32();
        ns_decoder d;
        ns_decoder_init(&d);
        int next = 0;
        for (size_t i = 0; i < n; i++) {
            ns_frame g;
            if (ns_decoder_push(&d, stream[i], &g) == NS_OK && next < items && frames_equal(&g, &want[next]))
                next++;
        }
        total += items;
        if (next != items) {
            CHECK(0);
            return;
        }
    }
    printf("frames in noise: %ld frames in %ld streams, all decoded in order\n", total, iters);
}

int main(int argc, char **argv)
{
    const char *doc = argc > 1 ? argv[1] : NULL;
    long iters = argc > 2 ? atol(argv[2]) : 1000000;
    test_crc();
    test_doc_vectors(doc);
    test_round_trips();
    test_flipped_bit();
    test_garbage_oversized();
    test_wrong_lengths_and_types();
    test_idle();
    test_rig();
    test_fuzz(iters);
    test_frames_in_noise(iters / 20);
    printf("%d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
