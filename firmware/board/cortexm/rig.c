/*
 * mps2-an386 port (QEMU): the rig firmware on an emulated Cortex-M4.
 *
 *   SysTick at the sample rate   -> the sample cycle (ns_rig_tick)
 *   UART0 RX interrupt           -> RX ring      (the rig link, -serial #1)
 *   UART0 TX interrupt           <- TX ring      (kicked by the cycle)
 *   UART1, polled from main()    -> one diagnostics line per second (-serial #2)
 *   "ADC"/"DAC"                  -> the on-chip neuron (NS_WITH_NEURON) through
 *                                   ns_afe scaling, or a passive RC membrane
 *
 * Priorities: UART RX/TX above SysTick, so a long sample cycle never costs
 * a received byte on a UART with a one-byte buffer.
 */
#include <stdint.h>

#include "mps2.h"
#include "ns_afe.h"
#include "ns_rig.h"
#ifdef NS_WITH_NEURON
#include "ns_ca1.h"
#endif

#ifndef RIG_RATE_HZ
#define RIG_RATE_HZ 10000u
#endif

static ns_rig rig;

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

static void uart_kick_tx(void) { NVIC_ISPR0 = 1u << UART0_TX_IRQ; }

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
    uart_kick_tx();
    /* The cell over the next interval, with the current actually driven. */
    float i = ns_afe_dac_current(&afe, code);
#ifdef NS_WITH_NEURON
    float mv = ns_ca1_step(&cell, i, 1000.0f / (float)RIG_RATE_HZ);
#else
    v_rc += (1000.0f / (float)RIG_RATE_HZ) / 10.0f * (-65.0f + i - v_rc);
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

void Uart0Rx_Handler(void)
{
    UART_INT(UART0) = 2u;
    while (UART_STATE(UART0) & UART_RXFULL)
        ns_rig_rx_put(&rig, (uint8_t)UART_DATA(UART0));
}

void Uart0Tx_Handler(void)
{
    UART_INT(UART0) = 1u;
    const uint8_t *p;
    uint32_t n;
    while ((n = ns_rig_tx_peek(&rig, &p)) > 0) {
        uint32_t k = 0;
        while (k < n && !(UART_STATE(UART0) & UART_TXFULL))
            UART_DATA(UART0) = p[k++];
        ns_rig_tx_consume(&rig, k);
        if (k < n)
            break; /* the TX interrupt brings us back */
    }
}

/* ---- diagnostics on UART1 ---- */

static void diag_putc(char c)
{
    while (UART_STATE(UART1) & UART_TXFULL) {
    }
    UART_DATA(UART1) = (uint32_t)c;
}

static void diag_puts(const char *s)
{
    while (*s)
        diag_putc(*s++);
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
        diag_putc(b[--n]);
}

int main(void)
{
    /* Output to zero first: the safe state at reset. */
    dac_write(ns_afe_dac_code(&afe, 0));
    ns_rig_config cfg = {
        .rig_id = 0x4D345246u, /* "FR4M" */
        .version = NS_PROTO_VERSION,
        .sample_rate_hz = RIG_RATE_HZ,
        .v_unit = NS_V_UNIT_MV,
        .i_unit = NS_I_UNIT_UA_CM2,
        .v_scale = afe.v_scale,
        .i_scale = afe.i_scale,
        .i_limit = (int32_t)(50.0f / afe.i_scale),
        .max_valid_us = 1000000,
        .heartbeat_us = 250000,
    };
    ns_rig_init(&rig, &cfg);
#ifdef NS_WITH_NEURON
    ns_ca1_init(&cell);
    adc_code = ns_afe_adc_code(&afe, cell.y[0]);
#else
    adc_code = ns_afe_adc_code(&afe, v_rc);
#endif
    /* UARTs: BAUDDIV 16 is the fastest the CMSDK UART allows. */
    UART_BAUDDIV(UART0) = 16;
    UART_CTRL(UART0) = 0x1u | 0x2u | 0x4u | 0x8u;
    UART_BAUDDIV(UART1) = 16;
    UART_CTRL(UART1) = 0x1u;
    NVIC_IPR(UART0_RX_IRQ) = 0x40;
    NVIC_IPR(UART0_TX_IRQ) = 0x40;
    NVIC_ISER0 = (1u << UART0_RX_IRQ) | (1u << UART0_TX_IRQ);
    /* SysTick: the sample clock, from the 25 MHz core clock. */
    SCB_SHPR3 = (SCB_SHPR3 & 0x00FFFFFFu) | (0x80u << 24);
    SYST_RVR = SYSCLK_HZ / RIG_RATE_HZ - 1;
    SYST_CVR = 0;
    SYST_CSR = 0x7u;
    diag_puts("ns-rig mps2-an386 up\n");
    uint32_t last = 0, last_busy = 0;
    for (;;) {
        __asm__ volatile("wfi");
        uint32_t c = rig.n.cycles;
        if (c - last >= RIG_RATE_HZ) {
            uint32_t busy = busy_sum_lo;
            uint32_t avg = (busy - last_busy) / (c - last);
            last = c;
            last_busy = busy;
            /* Read-only snapshot of counters the cycle writes (torn reads
             * of independent 32-bit words are harmless here). */
            diag_u("cycles=", c);
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
            diag_u(" dac=", (uint32_t)dac_code);
            diag_puts("\n");
        }
    }
}
