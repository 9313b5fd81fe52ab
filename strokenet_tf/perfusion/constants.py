"""Physical constants and limits shared by the perfusion forward model and its deconvolution (one home).

Both directions use the indicator-dilution relation (Østergaard et al. 1996, Magn Reson Med 36:715-725):
    C_t(t) = (RHO / K_H) * (CBF / 6000) * (AIF ⊗ R)(t),   CBV = (K_H / RHO) * 100 * ∫C_t / ∫AIF,
with CBF in mL/100g/min, CBV in mL/100g, time in s and C in HU above baseline (HU are linear in iodine).
"""

from __future__ import annotations

# Brain tissue density, g/mL.
RHO_G_PER_ML = 1.04
# Large-vessel (0.45) versus capillary (0.25) haematocrit: only plasma carries the tracer.
K_H = (1.0 - 0.45) / (1.0 - 0.25)
# CBF [mL/100g/min] = CBF_SCALE * max(residue) [1/s]; CBV [mL/100g] = CBV_SCALE * ∫C_t / ∫AIF.
SECONDS_PER_MINUTE = 60.0
PER_100G = 100.0
CBF_SCALE = (K_H / RHO_G_PER_ML) * PER_100G * SECONDS_PER_MINUTE
CBV_SCALE = (K_H / RHO_G_PER_ML) * PER_100G

# ISLES 2018 series: 43 to 49 frames 1 s apart. Fewer than MIN_FRAMES cannot hold a baseline, a bolus and
# its wash-out; a header without a frame interval is read as DEFAULT_FRAME_INTERVAL_S.
MIN_FRAMES = 20
DEFAULT_FRAME_INTERVAL_S = 1.0
# At least this many pre-bolus frames form the baseline.
MIN_BASELINE_FRAMES = 2
