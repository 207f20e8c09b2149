/*
 * Host board: the rig firmware as a Linux process. The UART is a
 * pseudo-terminal (the daemon opens its slave exactly as it would open
 * /dev/ttyACM0), the sample timer is clock_nanosleep on an absolute
 * CLOCK_MONOTONIC deadline, and the "ADC" and "DAC" are the on-chip neuron
 * (NS_WITH_NEURON) or a passive RC membrane.
 *
 * Single-threaded: each period reads what the pty holds into the RX ring,
 * runs the sample cycle, and writes the TX ring to the pty, so the core's
 * rings see one producer and one consumer as on the MCU.
 *
 * Fault injection mirrors `neurostimd rig`'s flags (see --help).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "ns_rig.h"
#ifdef NS_WITH_NEURON
#include "ns_ca1.h"
#endif

static volatile sig_atomic_t stop;
static void on_signal(int s) { (void)s; stop = 1; }

static ns_rig rig; /* static: no heap, like the MCU */

struct opts {
    const char *link;
    double duration_s;
    uint32_t rig_id, rate;
    uint16_t version;
    float v_scale, i_scale;
    double disconnect_at_s, reconnect_ms;
    int stats;
};

static void usage(FILE *to)
{
    fprintf(to,
            "usage: ns-rig-host [options]\n"
            "The reference rig firmware on the host: prints the pseudo-terminal\n"
            "(or --link) to open with `neurostimd --plant serial --port PATH`\n"
            "on its first line, then runs until SIGINT/SIGTERM or --duration.\n\n"
            "  --link PATH          keep a symlink to the current pty here\n"
            "  --duration S         stop after S seconds of rig time\n"
            "  --rate HZ            sample rate (default 10000)\n"
            "  --rig-id N           rig id in Hello (default 18)\n"
            "  --version N          protocol version announced in Hello (default 1)\n"
            "  --v-scale X          mV per count (default 0.001)\n"
            "  --i-scale X          uA/cm2 per count (default 0.001)\n"
            "  --stats              (accepted; the counters are always printed on stderr\n"
            "                       at exit: `rig stopped: {JSON}`, like `neurostimd rig`)\n"
            "fault injection (like `neurostimd rig`):\n"
            "  --drop P --corrupt P --duplicate P --garbage P   per sample\n"
            "  --stall-at S --stall-ms MS      silent and deaf for MS from S\n"
            "  --disconnect-at S --reconnect-ms MS   close the pty, a new one after MS (500)\n"
            "  --fault-at S --fault-code N     send a Fault frame at S\n"
            "  --seed N\n");
}

/* A pty pair in raw mode; the slave stays open here so the pty survives
 * between daemon connections (as `neurostimd rig` does). */
static int open_pty(const char *link, int *slave_fd, char *name, size_t cap)
{
    int m = posix_openpt(O_RDWR | O_NOCTTY);
    if (m < 0 || grantpt(m) < 0 || unlockpt(m) < 0)
        return -1;
    if (ptsname_r(m, name, cap) != 0)
        return -1;
    int s = open(name, O_RDWR | O_NOCTTY);
    if (s < 0)
        return -1;
    struct termios t;
    if (tcgetattr(s, &t) == 0) {
        cfmakeraw(&t);
        tcsetattr(s, TCSANOW, &t);
    }
    fcntl(m, F_SETFL, fcntl(m, F_GETFL) | O_NONBLOCK);
    *slave_fd = s;
    if (link) {
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s.new", link);
        unlink(tmp);
        if (symlink(name, tmp) != 0 || rename(tmp, link) != 0) {
            fprintf(stderr, "%s: cannot publish the link: %s\n", link, strerror(errno));
            return -1;
        }
    }
    return m;
}

static void ts_add_ns(struct timespec *t, long ns)
{
    t->tv_nsec += ns;
    while (t->tv_nsec >= 1000000000L) {
        t->tv_nsec -= 1000000000L;
        t->tv_sec++;
    }
}

static double ts_diff_us(const struct timespec *a, const struct timespec *b)
{
    return (double)(a->tv_sec - b->tv_sec) * 1e6 + (double)(a->tv_nsec - b->tv_nsec) / 1e3;
}

static double num(const char *flag, const char *v)
{
    char *end;
    if (!v) {
        fprintf(stderr, "%s needs a value\n", flag);
        exit(2);
    }
    double x = strtod(v, &end);
    if (*end != 0) {
        fprintf(stderr, "%s: not a number: %s\n", flag, v);
        exit(2);
    }
    return x;
}

int main(int argc, char **argv)
{
    struct opts o = {0};
    o.rig_id = 18;
    o.rate = 10000;
    o.version = NS_PROTO_VERSION;
    o.v_scale = 0.001f;
    o.i_scale = 0.001f;
    o.disconnect_at_s = -1;
    o.reconnect_ms = 500;
    ns_faults f;
    memset(&f, 0, sizeof f);
    double stall_at = -1, stall_ms = 0, fault_at = -1;
    uint32_t seed = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG(name) (strcmp(a, name) == 0 && (++i, 1))
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--stats") == 0) {
            o.stats = 1;
        } else if (ARG("--link")) {
            if (!v) { usage(stderr); return 2; }
            o.link = v;
        } else if (ARG("--duration")) o.duration_s = num(a, v);
        else if (ARG("--rate")) o.rate = (uint32_t)num(a, v);
        else if (ARG("--rig-id")) o.rig_id = (uint32_t)num(a, v);
        else if (ARG("--version") || ARG("--protocol-version")) o.version = (uint16_t)num(a, v);
        else if (ARG("--v-scale")) o.v_scale = (float)num(a, v);
        else if (ARG("--i-scale")) o.i_scale = (float)num(a, v);
        else if (ARG("--drop")) f.drop = (float)num(a, v);
        else if (ARG("--corrupt")) f.corrupt = (float)num(a, v);
        else if (ARG("--duplicate")) f.duplicate = (float)num(a, v);
        else if (ARG("--garbage")) f.garbage = (float)num(a, v);
        else if (ARG("--stall-at")) stall_at = num(a, v);
        else if (ARG("--stall-ms")) stall_ms = num(a, v);
        else if (ARG("--disconnect-at")) o.disconnect_at_s = num(a, v);
        else if (ARG("--reconnect-ms")) o.reconnect_ms = num(a, v);
        else if (ARG("--fault-at")) fault_at = num(a, v);
        else if (ARG("--fault-code")) f.fault_code = (uint16_t)num(a, v);
        else if (ARG("--seed")) seed = (uint32_t)num(a, v);
        else {
            fprintf(stderr, "unknown argument: %s\n", a);
            usage(stderr);
            return 2;
        }
#undef ARG
    }
    if (o.rate == 0 || !(o.v_scale > 0) || !(o.i_scale > 0)) {
        fprintf(stderr, "--rate, --v-scale and --i-scale must be positive\n");
        return 2;
    }
    if (stall_at >= 0) {
        f.stall_at_us = (uint64_t)(stall_at * 1e6);
        f.stall_us = (uint64_t)(stall_ms * 1e3);
    }
    if (fault_at > 0)
        f.fault_at_us = (uint64_t)(fault_at * 1e6);

    ns_rig_config cfg = {
        .rig_id = o.rig_id,
        .version = o.version,
        .sample_rate_hz = o.rate,
        .v_unit = NS_V_UNIT_MV,
        .i_unit = NS_I_UNIT_UA_CM2,
        .v_scale = o.v_scale,
        .i_scale = o.i_scale,
        /* 50 uA/cm2: the bench's own limit, above the daemon's default. */
        .i_limit = (int32_t)(50.0f / o.i_scale),
        .max_valid_us = 1000000,
        .heartbeat_us = 250000,
    };
    ns_rig_init(&rig, &cfg);
    rig.faults = f;
    rig.rng = seed ? seed * 2654435761u : 1;

    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGPIPE, SIG_IGN);

    char name[256];
    int slave = -1;
    int master = open_pty(o.link, &slave, name, sizeof name);
    if (master < 0) {
        fprintf(stderr, "cannot create a pseudo-terminal: %s\n", strerror(errno));
        return 1;
    }
    printf("%s\n", o.link ? o.link : name);
    fflush(stdout);
    fprintf(stderr, "rig ready: run `neurostimd --plant serial --port %s` (Ctrl-C stops the rig)\n",
            o.link ? o.link : name);

#ifdef NS_WITH_NEURON
    static ns_ca1 cell;
    ns_ca1_init(&cell);
#else
    float v_rc = -65.0f;
#endif
    const float dt_ms = 1000.0f / (float)o.rate;
    const long period_ns = (long)(1e9 / o.rate);
    int32_t v_counts = 0, out = 0;
    int disconnected = 0, disconnects = 0;
    uint64_t reconnect_at_us = 0;
    uint64_t overruns = 0, behind_max_us = 0;
    double busy_us = 0;
    struct timespec next, t0, a, b;
    clock_gettime(CLOCK_MONOTONIC, &next);
    t0 = next;
    uint8_t buf[512];
    for (uint64_t k = 0; !stop; k++) {
        uint64_t t_us = k * 1000000u / o.rate;
        if (o.duration_s > 0 && (double)t_us / 1e6 >= o.duration_s)
            break;
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
        clock_gettime(CLOCK_MONOTONIC, &a);
        double late = ts_diff_us(&a, &next);
        if (late > 1e6 / o.rate) {
            overruns++;
            if (late > behind_max_us)
                behind_max_us = (uint64_t)late;
        }
        ts_add_ns(&next, period_ns);
        /* Disconnect and reconnect (a new pty, the link moved). */
        if (o.disconnect_at_s >= 0 && !disconnected && disconnects == 0
            && (double)t_us / 1e6 >= o.disconnect_at_s) {
            close(master);
            close(slave);
            master = slave = -1;
            disconnected = 1;
            disconnects++;
            reconnect_at_us = t_us + (uint64_t)(o.reconnect_ms * 1e3);
            ns_rig_link_lost(&rig);
        }
        if (disconnected && t_us >= reconnect_at_us) {
            master = open_pty(o.link, &slave, name, sizeof name);
            if (master < 0)
                return 1;
            disconnected = 0;
        }
        /* UART RX. */
        if (master >= 0) {
            /* Only what the ring can take: the rest waits in the pty
             * (back-pressure, as a UART with flow control). */
            for (;;) {
                size_t room = ns_rig_rx_free(&rig);
                if (room > sizeof buf)
                    room = sizeof buf;
                if (room == 0)
                    break;
                ssize_t n = read(master, buf, room);
                if (n <= 0)
                    break;
                for (ssize_t i = 0; i < n; i++)
                    ns_rig_rx_put(&rig, buf[i]);
                if ((size_t)n < room)
                    break;
            }
        }
        /* The sample cycle: ADC in, DAC out. */
        out = ns_rig_tick(&rig, v_counts);
        float i_stim = (float)out * o.i_scale;
#ifdef NS_WITH_NEURON
        float v_mv = ns_ca1_step(&cell, i_stim, dt_ms);
#else
        /* Passive membrane: tau 10 ms, 1 mV per uA/cm2. */
        v_rc += dt_ms / 10.0f * (-65.0f + i_stim - v_rc);
        float v_mv = v_rc;
#endif
        v_counts = (int32_t)lrintf(v_mv / o.v_scale);
        /* UART TX. */
        if (master >= 0) {
            const uint8_t *p;
            uint32_t n;
            while ((n = ns_rig_tx_peek(&rig, &p)) > 0) {
                ssize_t w = write(master, p, n);
                if (w <= 0)
                    break;
                ns_rig_tx_consume(&rig, (uint32_t)w);
            }
        } else {
            const uint8_t *p;
            uint32_t n;
            while ((n = ns_rig_tx_peek(&rig, &p)) > 0)
                ns_rig_tx_consume(&rig, n);
        }
        clock_gettime(CLOCK_MONOTONIC, &b);
        busy_us += ts_diff_us(&b, &a);
    }
    /* Output to zero on the way out. */
    out = 0;
    rig.n.overruns = (uint32_t)overruns;
    struct timespec end;
    clock_gettime(CLOCK_MONOTONIC, &end);
    {
        const ns_rig_counters *n = &rig.n;
        const ns_decode_stats *d = &rig.dec.stats;
        fprintf(stderr,
                "rig stopped: {\"cycles\":%u,\"samples_sent\":%u,\"frames_sent\":%u,\"hellos\":%u,"
                "\"commands\":%u,\"expired\":%u,\"clamped\":%u,\"malformed\":%u,"
                "\"unexpected\":%u,\"version_mismatch\":%u,\"heartbeats_rx\":%u,\"heartbeats_tx\":%u,\"faults_sent\":%u,"
                "\"tx_full\":%u,\"rx_full\":%u,\"overruns\":%u,\"late_max_us\":%llu,"
                "\"dropped\":%u,\"corrupted\":%u,\"duplicated\":%u,\"garbage_bytes\":%u,"
                "\"stalled_cycles\":%u,\"disconnects\":%d,\"rx_frames\":%u,\"rx_errors\":%u,"
                "\"hold_max_us\":%u,\"busy_us_per_cycle\":%.3f,\"wall_s\":%.3f,\"output_at_exit\":%d}\n",
                n->cycles, n->samples_sent, n->frames_sent, n->hellos, n->commands, n->expired,
                n->clamped, n->malformed, n->unexpected, n->version_mismatch, n->heartbeats_rx, n->heartbeats_tx,
                n->faults_sent, n->tx_full, n->rx_full, n->overruns,
                (unsigned long long)behind_max_us, n->dropped, n->corrupted, n->duplicated,
                n->garbage_bytes, n->stalled_cycles, disconnects, d->frames, ns_decode_errors(d),
                n->hold_max_us, n->cycles ? busy_us / n->cycles : 0.0, ts_diff_us(&end, &t0) / 1e6, out);
    }
    if (master >= 0)
        close(master);
    if (slave >= 0)
        close(slave);
    if (o.link)
        unlink(o.link);
    return 0;
}
