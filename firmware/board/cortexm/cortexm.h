/* Cortex-M core registers shared by the ports (ARMv7-M). */
#ifndef CORTEXM_H
#define CORTEXM_H
#include <stdint.h>

#define REG(a) (*(volatile uint32_t *)(a))

#define SYST_CSR REG(0xE000E010u)
#define SYST_RVR REG(0xE000E014u)
#define SYST_CVR REG(0xE000E018u)
#define NVIC_ISER0 REG(0xE000E100u)
#define NVIC_ISPR0 REG(0xE000E200u)
#define NVIC_IPR(n) (*(volatile uint8_t *)(0xE000E400u + (n)))
#define SCB_ICSR REG(0xE000ED04u)
#define SCB_SHPR3 REG(0xE000ED20u)
#define SCB_CPACR REG(0xE000ED88u)
#define ICSR_PENDSTSET (1u << 26)

/* What a port provides (port.h): SYSCLK_HZ, PORT_NAME, PORT_IRQS (the
 * vector table's IRQ entries), and these, inline:
 *   port_uart_init()     the rig link's UART, interrupts on, and the
 *                        diagnostics UART
 *   port_uart_rx_isr()   drain received bytes into ns_rig_rx_put()
 *   port_uart_tx_isr()   send from ns_rig_tx_peek()/ns_rig_tx_consume()
 *   port_uart_kick_tx()  make the TX path run (pend its interrupt)
 *   port_uart_rx_resume() after the cycle: receive again if the RX path
 *                        paused because the RX ring was full
 *   port_diag_putc(c)    one diagnostics character, polled */
#endif
