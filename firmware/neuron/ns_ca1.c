/* The on-chip CA1 neuron: see ns_ca1.h. */
#include "ns_ca1.h"

/* `regular` preset (src/neuron/mod.rs, Params::default). */
#define CM 1.0f
#define G_L 0.05f
#define E_L (-70.0f)
#define G_NA 35.0f
#define E_NA 55.0f
#define G_NAP 0.2f
#define G_KDR 6.0f
#define E_K (-90.0f)
#define G_A 1.4f
#define G_CA 0.08f
#define E_CA 120.0f
#define G_KCA 10.0f
#define A_C 6.0f
#define G_KAHP 5.0f
#define A_Q 2.0f
#define NU 0.13f
#define TAU_CA 13.0f
#define TAU_B 15.0f
#define TAU_Z 75.0f
#define TAU_R 1.0f
#define TAU_C 2.0f
#define TAU_Q 450.0f

void ns_ca1_init(ns_ca1 *c)
{
    static const float y0[9] = {
        -71.962f, 0.979199f, 0.0242166f, 0.207565f, 0.0013689f, 0.005507f, 0.002486f, 0.0f, 0.000787f,
    };
    for (int i = 0; i < 9; i++)
        c->y[i] = y0[i];
    c->i_app = 1.0f;
    c->g_m = 1.0f;
}

static void rates(float v, float r[NS_CA1_NF])
{
    float x = (v - NS_CA1_VMIN) * (1.0f / NS_CA1_DV);
    if (x < 0.0f)
        x = 0.0f;
    if (x > (float)(NS_CA1_NV - 1) - 0.001f)
        x = (float)(NS_CA1_NV - 1) - 0.001f;
    int i = (int)x;
    float w = x - (float)i;
    const float *a = ns_ca1_table[i], *b = ns_ca1_table[i + 1];
    for (int j = 0; j < NS_CA1_NF; j++)
        r[j] = a[j] + w * (b[j] - a[j]);
}

float ns_ca1_step(ns_ca1 *c, float i_stim, float dt_ms)
{
    /* Linearly implicit Euler, variable by variable: each state x with
     * dx/dt = a - b x moves to (x + h a) / (1 + h b). Stable at any step
     * (no exp needed), so the step is set by accuracy: at most
     * NS_CA1_MAX_STEP_MS (5 substeps per 0.1 ms sample by default). */
    int n = (int)(dt_ms * (1.0f / NS_CA1_MAX_STEP_MS) + 0.999f);
    if (n < 1)
        n = 1;
    const float h = dt_ms / (float)n;
    float *y = c->y;
    for (int s = 0; s < n; s++) {
        float r[NS_CA1_NF];
        float v = y[0], ca = y[8] > 0.0f ? y[8] : 0.0f;
        rates(v, r);
        float n2 = y[2] * y[2];
        float g_ca = G_CA * y[5] * y[5];
        float g_na = G_NA * r[0] * y[1] + G_NAP * r[5];
        float g_k = G_KDR * n2 * n2 + G_A * r[6] * y[3] + c->g_m * y[4]
                    + G_KCA * ca / (ca + A_C) * y[6] + G_KAHP * y[7];
        /* C dV/dt = sum g (E - V) + I: a = (sum g E + I) / C, b = sum g / C */
        float g = G_L + g_na + g_k + g_ca;
        float a = (G_L * E_L + g_na * E_NA + g_k * E_K + g_ca * E_CA + c->i_app + i_stim) * (1.0f / CM);
        float i_ca = g_ca * (v - E_CA);
        float ca2 = ca * ca, ca4 = ca2 * ca2;
        float qinf = ca4 / (ca4 + A_Q * A_Q * A_Q * A_Q);
        y[0] = (v + h * a) / (1.0f + h * g * (1.0f / CM));
        y[1] = (y[1] + h * r[1] * r[2]) / (1.0f + h * r[2]);
        y[2] = (y[2] + h * r[3] * r[4]) / (1.0f + h * r[4]);
        y[3] = (y[3] + h * r[7] * (1.0f / TAU_B)) / (1.0f + h * (1.0f / TAU_B));
        y[4] = (y[4] + h * r[8] * (1.0f / TAU_Z)) / (1.0f + h * (1.0f / TAU_Z));
        y[5] = (y[5] + h * r[9] * (1.0f / TAU_R)) / (1.0f + h * (1.0f / TAU_R));
        y[6] = (y[6] + h * r[10] * (1.0f / TAU_C)) / (1.0f + h * (1.0f / TAU_C));
        y[7] = (y[7] + h * qinf * (1.0f / TAU_Q)) / (1.0f + h * (1.0f / TAU_Q));
        y[8] = (ca - h * NU * i_ca) / (1.0f + h * (1.0f / TAU_CA));
    }
    /* A numerical blow-up (it should not happen) must not wedge the rig:
     * restart the cell. */
    if (!(y[0] > -200.0f && y[0] < 200.0f))
        ns_ca1_init(c);
    return y[0];
}
