/*
 * The rig firmware on a Cortex-M (the QEMU ports: board/mps2, board/lm3s).
 *
 *   SysTick at the sample rate   -> the sample cycle (ns_rig_tick)
 *   UART0 RX interrupt           -> RX ring      (the rig link, -serial #1)
 *   UART0 TX interrupt           <- TX ring      (kicked by the cycle)
 *   UART1, polled from main()    -> one diagnostics line per second (-serial #2)
 *   "ADC"/"DAC"                  -> the on-chip neuron (NS_WITH_NEURON) through
 *                                   ns_afe scaling, or a passive RC membrane
 *
 * Priorities: UART above SysTick, so a long sample cycle never costs a
 * received byte on a UART with a one-byte buffer. The port's registers are
 * in its port.h.
 */
#include <stdint.h>

#define PORT_DEFINE_HANDLERS
#include "port.h"
#include "ns_afe.h"
#include "ns_rig.h"
#ifdef NS_WITH_NEURON
#include "ns_ca1.h"
#endif

#ifndef RIG_RATE_HZ
#define RIG_RATE_HZ 10000u
#endif

/* Boot configuration a loader may leave in RAM before reset (QEMU:
 * run-qemu.sh --rate uses -device loader): not zeroed by the startup code.
 * A bench board would read jumpers or flash instead. */
#define BOOTCFG_MAGIC 0x45544152u /* "RATE" */
__attribute__((section(".bootcfg"), used)) volatile uint32_t bootcfg[5];
/* bootcfg: [0] magic, [1] sample rate, Hz; with NS_FAULT_INJECTION (the
 * lm3s image): [2] garbage probability per sample x 1e6, [3] stall start,
 * ms, [4] stall length, ms. */
static uint32_t rate_hz = RIG_RATE_HZ;

ns_rig rig;

/* The emulated front end: a 16-bit ADC over +-2.5 V behind a x10
 * headstage (membrane +-250 mV, 7.6 uV per code), and a 16-bit DAC whose
 * current source gives 0.01 uA/cm2 per code (+-327 uA/cm2). */
static const ns_afe afe = {
    .adc_zero = 0, .adc_lsb_mv = 5000.0f / 65536.0f, .v_gain = 10.0f,
    .adc_min = -32768, .adc_max = 32767,
    .dac_zero = 0, .dac_codes_per_unit = 100.0f, .dac_min = -32768, .dac_max = 32767,
    .v_scale = 0.001f, .i_scale = 0.001f,
};

static volatile int32_t dac_code; /* the output stage */
static int32_t adc_code;

#ifdef NS_WITH_NEURON
static ns_ca1 cell;
#else
static float v_rc = -65.0f;
#endif

/* Cycle timing, in SysTick counts (1/SYSCLK_HZ; under -icount these count
 * instructions, see docs/firmware.md). */
static volatile uint32_t busy_sum_lo, busy_max, late_ticks;
static volatile uint32_t busy_hist[8];

static void dac_write(int32_t code) { dac_code = code; }

void SysTick_Handler(void)
{
    uint32_t t0 = SYST_CVR;
    /* ADC sample at this instant -> wire counts; overrange is a fault. */
    int32_t v = ns_afe_v_counts(&afe, adc_code);
    if (ns_afe_overrange(&afe, adc_code) && !rig.faulted)
        ns_rig_fault(&rig, NS_FAULT_OVERRANGE, (uint32_t)adc_code);
    int32_t out = ns_rig_tick(&rig, v);
    int32_t code = ns_afe_dac_code(&afe, out);
    dac_write(code);
    port_uart_kick_tx();
    port_uart_rx_resume();
    /* The cell over the next interval, with the current actually driven. */
    float i = ns_afe_dac_current(&afe, code);
#ifdef NS_WITH_NEURON
    float mv = ns_ca1_step(&cell, i, 1000.0f / (float)rate_hz);
#else
    v_rc += (1000.0f / (float)rate_hz) / 10.0f * (-65.0f + i - v_rc);
    float mv = v_rc;
#endif
    adc_code = ns_afe_adc_code(&afe, mv);
    uint32_t t1 = SYST_CVR;
    uint32_t busy = t0 >= t1 ? t0 - t1 : t0 + (SYST_RVR + 1) - t1;
    busy_sum_lo += busy;
    if (busy > busy_max)
        busy_max = busy;
    uint32_t b = busy * 8u / (SYST_RVR + 1);
    busy_hist[b > 7 ? 7 : b]++;
    /* The next tick already pending: this cycle overran its period. */
    if (SCB_ICSR & ICSR_PENDSTSET)
        late_ticks++;
}

/* ---- diagnostics on UART1 ---- */

static void diag_puts(const char *s)
{
    while (*s)
        port_diag_putc(*s++);
}

static void diag_u(const char *key, uint32_t v)
{
    char b[11];
    int n = 0;
    do {
        b[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    diag_puts(key);
    while (n)
        port_diag_putc(b[--n]);
}

#ifdef RIG_BENCH
/* Instruction counts under `qemu -icount shift=0` (1 ns of virtual time per
 * instruction; SysTick counts 1/SYSCLK_HZ s): N sample cycles, each
 * decoding one 27-byte Command and encoding one Sample, then N neuron
 * steps. Printed on the diagnostics UART. */
static uint32_t bench_counts(void)
{
    return 0xFFFFFFu - SYST_CVR;
}

static void bench(void)
{
    enum { N = 2000 };
    ns_rig_config cfg = {.rig_id = 1, .version = 1, .sample_rate_hz = 10000, .v_unit = 1, .i_unit = 1,
                         .v_scale = 0.001f, .i_scale = 0.001f, .i_limit = 50000, .max_valid_us = 1000000};
    ns_rig_init(&rig, &cfg);
    ns_frame f;
    uint8_t hello[NS_MAX_WIRE], cmd[NS_MAX_WIRE];
    f.type = NS_HELLO;
    f.seq = 0;
    f.u.hello = (ns_hello){1, 0, 0, 0, 0, 0.0f, 0.0f};
    uint32_t nh = (uint32_t)ns_encode(&f, hello);
    f.type = NS_COMMAND;
    f.u.command = (ns_command){0, 1234, 2000, 1};
    uint32_t nc = (uint32_t)ns_encode(&f, cmd);
    for (uint32_t i = 0; i < nh; i++)
        ns_rig_rx_put(&rig, hello[i]);
    SYST_RVR = 0xFFFFFFu;
    SYST_CVR = 0;
    SYST_CSR = 0x5u; /* running, no interrupt */
    const uint8_t *p;
    uint32_t n, t_idle = 0, t_cycle = 0, t_neuron = 0, t0;
    ns_rig_tick(&rig, 0);
    while ((n = ns_rig_tx_peek(&rig, &p)) > 0)
        ns_rig_tx_consume(&rig, n);
    /* A sample cycle with nothing received: ADC, sample out, DAC. */
    t0 = bench_counts();
    for (int k = 0; k < N; k++) {
        int32_t out = ns_rig_tick(&rig, -65000 + k);
        dac_write(ns_afe_dac_code(&afe, out));
        while ((n = ns_rig_tx_peek(&rig, &p)) > 0)
            ns_rig_tx_consume(&rig, n);
    }
    t_idle = bench_counts() - t0;
    /* The same with one Command received per cycle (the daemon's stream). */
    t0 = bench_counts();
    for (int k = 0; k < N; k++) {
        for (uint32_t i = 0; i < nc; i++)
            ns_rig_rx_put(&rig, cmd[i]);
        int32_t out = ns_rig_tick(&rig, -65000 + k);
        dac_write(ns_afe_dac_code(&afe, out));
        while ((n = ns_rig_tx_peek(&rig, &p)) > 0)
            ns_rig_tx_consume(&rig, n);
    }
    t_cycle = bench_counts() - t0;
#ifdef NS_WITH_NEURON
    t0 = bench_counts();
    for (int k = 0; k < N; k++)
        ns_ca1_step(&cell, 1.0f, 0.1f);
    t_neuron = bench_counts() - t0;
#endif
    SYST_CSR = 0;
    /* counts x (1e9 / SYSCLK_HZ) ns = instructions at shift=0 */
    uint32_t ns_per_count = 1000000000u / SYSCLK_HZ;
    diag_u("bench instructions per call (qemu -icount shift=0): cycle_idle=", t_idle / N * ns_per_count);
    diag_u(" cycle_with_command=", t_cycle / N * ns_per_count);
    diag_u(" neuron_step=", t_neuron / N * ns_per_count);
    diag_u(" commands=", rig.n.commands);
    diag_puts("\n");
}
#endif

int main(void)
{
    if (bootcfg[0] == BOOTCFG_MAGIC && bootcfg[1] >= 100 && bootcfg[1] <= 20000
        && SYSCLK_HZ / bootcfg[1] <= 0x1000000u)
        rate_hz = bootcfg[1];
    /* Output to zero first: the safe state at reset. */
    dac_write(ns_afe_dac_code(&afe, 0));
    ns_rig_config cfg = {
        .rig_id = 0x4D345246u, /* "FR4M" */
        .version = NS_PROTO_VERSION,
        .sample_rate_hz = rate_hz,
        .v_unit = NS_V_UNIT_MV,
        .i_unit = NS_I_UNIT_UA_CM2,
        .v_scale = afe.v_scale,
        .i_scale = afe.i_scale,
        .i_limit = (int32_t)(50.0f / afe.i_scale),
        .max_valid_us = 1000000,
        .heartbeat_us = 250000,
    };
#ifdef RIG_BENCH
#ifdef NS_WITH_NEURON
    ns_ca1_init(&cell);
#endif
    port_uart_init();
    bench();
#endif
    ns_rig_init(&rig, &cfg);
#ifdef NS_FAULT_INJECTION
    if (bootcfg[0] == BOOTCFG_MAGIC) {
        rig.faults.garbage = (float)bootcfg[2] * 1e-6f;
        rig.faults.stall_at_us = (uint64_t)bootcfg[3] * 1000u;
        rig.faults.stall_us = (uint64_t)bootcfg[4] * 1000u;
    }
#endif
#ifdef NS_WITH_NEURON
    ns_ca1_init(&cell);
    adc_code = ns_afe_adc_code(&afe, cell.y[0]);
#else
    adc_code = ns_afe_adc_code(&afe, v_rc);
#endif
    port_uart_init();
    /* SysTick: the sample clock, from the core clock. */
    SCB_SHPR3 = (SCB_SHPR3 & 0x00FFFFFFu) | (0x80u << 24);
    SYST_RVR = SYSCLK_HZ / rate_hz - 1;
    SYST_CVR = 0;
    SYST_CSR = 0x7u;
    diag_puts("ns-rig " PORT_NAME " up\n");
    uint32_t last = 0, last_busy = 0;
    for (;;) {
#ifndef PORT_BUSY_IDLE
        __asm__ volatile("wfi");
#endif
        uint32_t c = rig.n.cycles;
        if (c - last >= rate_hz) {
            uint32_t busy = busy_sum_lo;
            uint32_t avg = (busy - last_busy) / (c - last);
            last = c;
            last_busy = busy;
            /* Read-only snapshot of counters the cycle writes (torn reads
             * of independent 32-bit words are harmless here). */
            diag_u("rate=", rate_hz);
            diag_u(" cycles=", c);
            diag_u(" samples=", rig.n.samples_sent);
            diag_u(" hellos=", rig.n.hellos);
            diag_u(" commands=", rig.n.commands);
            diag_u(" expired=", rig.n.expired);
            diag_u(" malformed=", rig.n.malformed);
            diag_u(" rx_frames=", rig.dec.stats.frames);
            diag_u(" rx_errors=", ns_decode_errors(&rig.dec.stats));
            diag_u(" tx_full=", rig.n.tx_full);
            diag_u(" rx_full=", rig.n.rx_full);
            diag_u(" late=", late_ticks);
            /* SysTick counts per cycle: mean over the last second, max ever. */
            diag_u(" busy_avg=", avg);
            diag_u(" busy_max=", busy_max);
            diag_u(" hold_max_us=", rig.n.hold_max_us);
#ifdef NS_FAULT_INJECTION
            diag_u(" garbage_bytes=", rig.n.garbage_bytes);
            diag_u(" stalled_cycles=", rig.n.stalled_cycles);
#endif
            diag_u(" dac=", (uint32_t)dac_code);
            diag_puts("\n");
        }
    }
}
