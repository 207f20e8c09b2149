/* The registers this port uses on QEMU's mps2-an386 (Cortex-M4, 25 MHz,
 * ARM AN386 / CMSDK peripherals). */
#ifndef MPS2_H
#define MPS2_H
#include <stdint.h>

#define REG(a) (*(volatile uint32_t *)(a))

#define SYSCLK_HZ 25000000u

/* CMSDK APB UART (UART0: the rig link; UART1: diagnostics). */
#define UART0 0x40004000u
#define UART1 0x40005000u
#define UART_DATA(u) REG((u) + 0x00)
#define UART_STATE(u) REG((u) + 0x04) /* 0 TXFULL, 1 RXFULL, 2 TXOVR, 3 RXOVR */
#define UART_CTRL(u) REG((u) + 0x08)  /* 0 TXEN, 1 RXEN, 2 TXINTEN, 3 RXINTEN */
#define UART_INT(u) REG((u) + 0x0C)   /* status / write 1 to clear: 0 TX, 1 RX */
#define UART_BAUDDIV(u) REG((u) + 0x10)
#define UART_TXFULL 1u
#define UART_RXFULL 2u
#define UART0_RX_IRQ 0
#define UART0_TX_IRQ 1

/* SysTick. */
#define SYST_CSR REG(0xE000E010u)
#define SYST_RVR REG(0xE000E014u)
#define SYST_CVR REG(0xE000E018u)

/* NVIC and SCB. */
#define NVIC_ISER0 REG(0xE000E100u)
#define NVIC_ISPR0 REG(0xE000E200u)
#define NVIC_IPR(n) (*(volatile uint8_t *)(0xE000E400u + (n)))
#define SCB_ICSR REG(0xE000ED04u)
#define SCB_SHPR3 REG(0xE000ED20u)
#define SCB_CPACR REG(0xE000ED88u)
#define ICSR_PENDSTSET (1u << 26)

#endif
