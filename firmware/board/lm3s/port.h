/* lm3s6965evb (QEMU): Stellaris LM3S6965, Cortex-M3 (no FPU), PL011
 * UARTs with FIFOs. UART0 (0x4000C000, IRQ 5): the rig link, -serial #1;
 * UART1 (0x4000D000): diagnostics, polled, -serial #2.
 *
 * Why this second QEMU board: QEMU's CMSDK UART (mps2) takes one received
 * byte per round trip between QEMU's I/O thread and the emulated CPU,
 * which carries a few kB/s on a loaded host; the PL011 model queues
 * received bytes in its FIFO without waiting for the CPU (docs/firmware.md,
 * "QEMU's UARTs"). */
#ifndef PORT_H
#define PORT_H
#include "cortexm.h"
#include "ns_rig.h"

#define PORT_NAME "lm3s6965evb"
/* QEMU's Stellaris system clock at its reset RCC value (200 MHz PLL / 16);
 * run-qemu.sh --board lm3s6965evb measures the tick rate it gives. */
#ifndef SYSCLK_HZ
#define SYSCLK_HZ 12500000u
#endif

#define UART0 0x4000C000u
#define UART1 0x4000D000u
#define PL_DR(u) REG((u) + 0x000)
#define PL_FR(u) REG((u) + 0x018)   /* 4 RXFE, 5 TXFF */
#define PL_IBRD(u) REG((u) + 0x024)
#define PL_FBRD(u) REG((u) + 0x028)
#define PL_LCRH(u) REG((u) + 0x02C) /* 4 FEN, 6:5 WLEN */
#define PL_CR(u) REG((u) + 0x030)   /* 0 UARTEN, 8 TXE, 9 RXE */
#define PL_IMSC(u) REG((u) + 0x038) /* 4 RXIM, 5 TXIM, 6 RTIM */
#define PL_ICR(u) REG((u) + 0x044)
#define PL_RXFE (1u << 4)
#define PL_TXFF (1u << 5)
#define UART0_IRQ 5

void Uart0_Handler(void);
#define PORT_IRQS 0, 0, 0, 0, 0, Uart0_Handler,

extern ns_rig rig;

static inline void port_uart_init(void)
{
    PL_IBRD(UART0) = 1;
    PL_FBRD(UART0) = 0;
    PL_LCRH(UART0) = (3u << 5) | (1u << 4); /* 8N1, FIFOs on */
    PL_IMSC(UART0) = (1u << 4) | (1u << 6) | (1u << 5);
    PL_CR(UART0) = 1u | (1u << 8) | (1u << 9);
    PL_IBRD(UART1) = 1;
    PL_LCRH(UART1) = (3u << 5) | (1u << 4);
    PL_CR(UART1) = 1u | (1u << 8);
    NVIC_IPR(UART0_IRQ) = 0x40;
    NVIC_ISER0 = 1u << UART0_IRQ;
}

/* Flow control: with the RX ring full, leave bytes in the UART's FIFO and
 * mask the RX interrupt (QEMU then stops reading the pty; on hardware,
 * wire RTS to the FIFO level) until the sample cycle has made room. */
static inline void port_uart_rx_isr(void)
{
    while (!(PL_FR(UART0) & PL_RXFE)) {
        if (ns_rig_rx_free(&rig) == 0) {
            PL_IMSC(UART0) &= ~((1u << 4) | (1u << 6));
            return;
        }
        ns_rig_rx_put(&rig, (uint8_t)PL_DR(UART0));
    }
}

static inline void port_uart_rx_resume(void)
{
    if (!(PL_IMSC(UART0) & (1u << 4)) && ns_rig_rx_free(&rig) >= 16u) {
        PL_IMSC(UART0) |= (1u << 4) | (1u << 6);
        /* The handler cleared the RX interrupt with bytes still in the
         * FIFO, and a non-empty FIFO raises no new one: pend it. */
        if (!(PL_FR(UART0) & PL_RXFE))
            NVIC_ISPR0 = 1u << UART0_IRQ;
    }
}

static inline void port_uart_tx_isr(void)
{
    const uint8_t *p;
    uint32_t n;
    while ((n = ns_rig_tx_peek(&rig, &p)) > 0) {
        uint32_t k = 0;
        while (k < n && !(PL_FR(UART0) & PL_TXFF))
            PL_DR(UART0) = p[k++];
        ns_rig_tx_consume(&rig, k);
        if (k < n)
            break;
    }
}

static inline void port_uart_kick_tx(void) { NVIC_ISPR0 = 1u << UART0_IRQ; }

static inline void port_diag_putc(char c)
{
    while (PL_FR(UART1) & PL_TXFF) {
    }
    PL_DR(UART1) = (uint32_t)(uint8_t)c;
}

#ifdef PORT_DEFINE_HANDLERS
void Uart0_Handler(void)
{
    PL_ICR(UART0) = 0x7FFu;
    port_uart_rx_isr();
    port_uart_tx_isr();
}
#endif
#endif
