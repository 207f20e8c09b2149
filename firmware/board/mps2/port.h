/* mps2-an386 (QEMU): Cortex-M4F, 25 MHz, CMSDK APB UARTs.
 * UART0 (0x40004000, RX IRQ 0, TX IRQ 1): the rig link, -serial #1.
 * UART1 (0x40005000): diagnostics, polled, -serial #2.
 * The CMSDK UART holds one received byte: RX runs at a priority above the
 * sample cycle so that no byte is overwritten. */
#ifndef PORT_H
#define PORT_H
#include "cortexm.h"
#include "ns_rig.h"

#define PORT_NAME "mps2-an386"
#define SYSCLK_HZ 25000000u

#define UART0 0x40004000u
#define UART1 0x40005000u
#define UART_DATA(u) REG((u) + 0x00)
#define UART_STATE(u) REG((u) + 0x04) /* 0 TXFULL, 1 RXFULL */
#define UART_CTRL(u) REG((u) + 0x08)  /* 0 TXEN, 1 RXEN, 2 TXINTEN, 3 RXINTEN */
#define UART_INT(u) REG((u) + 0x0C)   /* status; write 1 to clear: 0 TX, 1 RX */
#define UART_BAUDDIV(u) REG((u) + 0x10)
#define UART_TXFULL 1u
#define UART_RXFULL 2u
#define UART0_RX_IRQ 0
#define UART0_TX_IRQ 1

void Uart0Rx_Handler(void);
void Uart0Tx_Handler(void);
#define PORT_IRQS Uart0Rx_Handler, Uart0Tx_Handler,

extern ns_rig rig;

static inline void port_uart_init(void)
{
    UART_BAUDDIV(UART0) = 16; /* the fastest the CMSDK UART allows */
    UART_CTRL(UART0) = 0x1u | 0x2u | 0x4u | 0x8u;
    UART_BAUDDIV(UART1) = 16;
    UART_CTRL(UART1) = 0x1u;
    NVIC_IPR(UART0_RX_IRQ) = 0x40;
    NVIC_IPR(UART0_TX_IRQ) = 0x40;
    NVIC_ISER0 = (1u << UART0_RX_IRQ) | (1u << UART0_TX_IRQ);
}

/* Flow control: with the RX ring full, leave the byte in the UART and
 * disable its RX interrupt (QEMU then stops reading the pty) until the
 * sample cycle has made room. */
static inline void port_uart_rx_isr(void)
{
    UART_INT(UART0) = 2u;
    while (UART_STATE(UART0) & UART_RXFULL) {
        if (ns_rig_rx_free(&rig) == 0) {
            UART_CTRL(UART0) &= ~0x8u;
            return;
        }
        ns_rig_rx_put(&rig, (uint8_t)UART_DATA(UART0));
    }
}

static inline void port_uart_rx_resume(void)
{
    if (!(UART_CTRL(UART0) & 0x8u) && ns_rig_rx_free(&rig) > 0) {
        UART_CTRL(UART0) |= 0x8u;
        if (UART_STATE(UART0) & UART_RXFULL)
            NVIC_ISPR0 = 1u << UART0_RX_IRQ;
    }
}

static inline void port_uart_tx_isr(void)
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

static inline void port_uart_kick_tx(void) { NVIC_ISPR0 = 1u << UART0_TX_IRQ; }

static inline void port_diag_putc(char c)
{
    while (UART_STATE(UART1) & UART_TXFULL) {
    }
    UART_DATA(UART1) = (uint32_t)(uint8_t)c;
}

#ifdef PORT_DEFINE_HANDLERS
void Uart0Rx_Handler(void) { port_uart_rx_isr(); }
void Uart0Tx_Handler(void) { port_uart_tx_isr(); }
#endif
#endif
