/* Reset and vector table for the Cortex-M ports (the IRQ entries come
 * from the port's PORT_IRQS). */
#include <stdint.h>

#include "port.h"

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;
int main(void);
void Reset_Handler(void);
void SysTick_Handler(void);

static void Default_Handler(void)
{
    /* An unexpected exception: the safe state is no current. The board's
     * main() put the DAC at zero at reset; a real port would also force
     * its output stage off here (e.g. an enable pin), then reset. */
    for (;;) {
    }
}

void Reset_Handler(void)
{
#if defined(__ARM_FP)
    /* The FPU (CP10, CP11) before any floating-point instruction. */
    SCB_CPACR |= 0xFu << 20;
    __asm__ volatile("dsb\n isb" ::: "memory");
#endif
    uint32_t *src = &_sidata, *dst = &_sdata;
    while (dst < &_edata)
        *dst++ = *src++;
    for (dst = &_sbss; dst < &_ebss;)
        *dst++ = 0;
    main();
    for (;;) {
    }
}

typedef void (*vector)(void);

__attribute__((section(".isr_vector"), used)) static const vector vectors[] = {
    (vector)(uintptr_t)&_estack,
    Reset_Handler,
    Default_Handler, /* NMI */
    Default_Handler, /* HardFault */
    Default_Handler, /* MemManage */
    Default_Handler, /* BusFault */
    Default_Handler, /* UsageFault */
    0, 0, 0, 0,
    Default_Handler, /* SVC */
    Default_Handler, /* DebugMon */
    0,
    Default_Handler, /* PendSV */
    SysTick_Handler,
    PORT_IRQS
};
