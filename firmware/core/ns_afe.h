/*
 * Analog front end scaling: from an ADC code to the wire's voltage counts,
 * and from the wire's current counts to a DAC code. A board fills an
 * ns_afe from its schematic (docs/firmware.md, "Porting"):
 *
 *   V_membrane [mV] = (adc_code - adc_zero) * adc_lsb_mv / v_gain
 *   DAC code       = dac_zero + I [wire unit] * dac_codes_per_unit
 *
 * where adc_lsb_mv is the ADC's LSB at its input (Vref / 2^bits),
 * v_gain the headstage/amplifier gain from membrane to ADC input, and
 * dac_codes_per_unit follows from the DAC's LSB and the current source's
 * transconductance (e.g. 1 nA per mV: codes = I_nA / (lsb_mV * 1 nA/mV)).
 * Header-only, single precision, no libm.
 */
#ifndef NS_AFE_H
#define NS_AFE_H

#include <stdint.h>

typedef struct {
    int32_t adc_zero;         /* ADC code at 0 mV membrane */
    float adc_lsb_mv;         /* mV per ADC code at the ADC input */
    float v_gain;             /* amplifier gain, membrane -> ADC input */
    int32_t adc_min, adc_max; /* codes at the rails: over-range */
    int32_t dac_zero;         /* DAC code for zero current */
    float dac_codes_per_unit; /* DAC codes per wire current unit */
    int32_t dac_min, dac_max; /* DAC code range */
    float v_scale, i_scale;   /* the wire's scales (the Hello's) */
} ns_afe;

static inline int32_t ns_round(float x)
{
    return (int32_t)(x >= 0.0f ? x + 0.5f : x - 0.5f);
}

/* ADC code -> wire voltage counts. */
static inline int32_t ns_afe_v_counts(const ns_afe *a, int32_t code)
{
    float mv = (float)(code - a->adc_zero) * a->adc_lsb_mv / a->v_gain;
    return ns_round(mv / a->v_scale);
}

/* Is the ADC at a rail (input over-range: Fault code 4)? */
static inline int ns_afe_overrange(const ns_afe *a, int32_t code)
{
    return code <= a->adc_min || code >= a->adc_max;
}

/* Membrane mV -> the code an ideal ADC would read (for an emulated cell). */
static inline int32_t ns_afe_adc_code(const ns_afe *a, float mv)
{
    int32_t c = a->adc_zero + ns_round(mv * a->v_gain / a->adc_lsb_mv);
    return c < a->adc_min ? a->adc_min : c > a->adc_max ? a->adc_max : c;
}

/* Wire current counts -> DAC code, clamped to the DAC's range. */
static inline int32_t ns_afe_dac_code(const ns_afe *a, int32_t counts)
{
    float c = (float)a->dac_zero + (float)counts * a->i_scale * a->dac_codes_per_unit;
    if (c < (float)a->dac_min)
        return a->dac_min;
    if (c > (float)a->dac_max)
        return a->dac_max;
    return ns_round(c);
}

/* DAC code -> the current it drives, in the wire unit. */
static inline float ns_afe_dac_current(const ns_afe *a, int32_t code)
{
    return (float)(code - a->dac_zero) / a->dac_codes_per_unit;
}

#endif
