"""Forward model of CT perfusion: tissue enhancement curves from an arterial input and tissue parameters.

Indicator-dilution model with an exponential residue function (Østergaard et al. 1996, Magn Reson Med
36:715-725) and an arterial input that reaches the tissue late (delay) and dispersed by an exponential
vascular transport kernel (Calamante et al. 2000, Magn Reson Med 44:466-473):

    C_t(t) = (RHO / K_H) * (CBF / 6000) * (AIF(· - delay) ⊗ D ⊗ R)(t),
    R(t) = exp(-t / MTT),   D(t) = exp(-t / beta) / beta  (unit area; beta = 0: no dispersion).

So CBV = CBF * MTT / 60 mL/100g and ∫C_t = (RHO / K_H) * CBV / 100 * ∫AIF. The AIF bolus is the gamma
variate of Thompson et al. 1964 (Circ Res 14:502-515) in the mode-and-peak form of Madsen 1992 (Phys Med
Biol 37:1597-1600).
"""

from __future__ import annotations

import numpy as np

from strokenet_tf.perfusion import constants

# Voxels per chunk: [chunk, frames] float64 arrays of a few MB, so 500k voxels stay well under 1 GB.
_CHUNK = 16384


def gamma_variate(times_s, arrival_s: float, peak: float, alpha: float, beta_s: float) -> np.ndarray:
    """Gamma-variate bolus that rises at `arrival_s` and reaches `peak` at its mode `arrival_s + alpha*beta_s`.

    Args:
        times_s: sample times in s, any shape.
        arrival_s: bolus arrival time in s (0 before it).
        peak: value at the mode (e.g. HU above baseline).
        alpha: shape (> 0; typically 2-5).
        beta_s: scale in s (> 0; typically 0.5-2).

    Returns:
        float64 array shaped like `times_s`: peak * (s/(alpha*beta))^alpha * exp(alpha - s/beta), s = t - arrival.
    """
    if alpha <= 0 or beta_s <= 0:
        raise ValueError(f"gamma_variate: alpha and beta_s must be > 0, got alpha={alpha}, beta_s={beta_s}")
    elapsed = np.maximum(np.asarray(times_s, np.float64) - arrival_s, 0.0)
    mode = alpha * beta_s
    return peak * (elapsed / mode) ** alpha * np.exp(alpha - elapsed / beta_s)


def _exponential_response(aif: np.ndarray, dt: float, tau: np.ndarray, delay: np.ndarray) -> np.ndarray:
    """Exact ∫ a(s) exp(-(t - s)/tau) ds at t = frame times - delay, for the piecewise-linear AIF `aif`.

    With hat functions at the frames (a half hat at frame 0; a(t) = 0 before it), every frame time falls
    between knots p and p + 1 at fraction g: the hats before p contribute through a first-order recursion
    S(p) = q S(p - 1) + a'(p - 1), q = exp(-dt/tau), and hats p and p + 1 through closed-form partial
    integrals. Exact to rounding; O(voxels x frames).

    Args:
        aif: [T] float64, one value per frame.
        dt: frame interval in s.
        tau: [N] time constants in s (> 0).
        delay: [N] delays in s (>= 0).

    Returns:
        [N, T] float64.
    """
    frames = aif.size
    tau = tau[:, None]
    q = np.exp(-dt / tau)
    one_minus_q = -np.expm1(-dt / tau)
    t2 = tau * tau / dt
    # Hats entirely before t: weight t2 (1 - q)^2 exp(-g dt / tau) per unit of S; frame 0's half hat is scaled.
    a0_ratio = (t2 * one_minus_q - tau * q) / (t2 * one_minus_q**2)
    recursion = np.zeros((frames, tau.shape[0]), np.float64)  # [p, voxel]: rows are contiguous
    recursion[1] = aif[0] * a0_ratio[:, 0]
    decay_row = q[:, 0]
    for p in range(2, frames):
        np.multiply(recursion[p - 1], decay_row, out=recursion[p])
        recursion[p] += aif[p - 1]
    shift = delay[:, None] / dt
    whole = np.floor(shift)
    g = 1.0 - (shift - whole)  # in (0, 1]
    p = np.arange(frames)[None, :] - whole.astype(np.int64) - 1
    valid = p >= 0
    p = np.clip(p, 0, frames - 1)
    decay = np.exp(-g * dt / tau)
    rising = np.where(p >= 1, decay * (tau - t2 * one_minus_q), 0.0)
    falling = (tau * (1.0 - g) + t2) - decay * (tau + t2)
    rise_next = tau * g - t2 * (-np.expm1(-g * dt / tau))
    next_value = aif[np.minimum(p + 1, frames - 1)] * (p + 1 <= frames - 1)
    value = (t2 * one_minus_q**2 * decay * np.take_along_axis(recursion.T, p, axis=1)
             + aif[p] * (rising + falling) + next_value * rise_next)
    return np.where(valid, value, 0.0)


def _check_parameters(cbf, mtt_s, delay_s, dispersion_s, count: int) -> list[np.ndarray]:
    arrays = []
    for name, value in (("cbf", cbf), ("mtt_s", mtt_s), ("delay_s", delay_s), ("dispersion_s", dispersion_s)):
        array = np.broadcast_to(np.asarray(value, np.float64), (count,)) if np.ndim(value) == 0 else np.asarray(
            value, np.float64).reshape(-1)
        if array.shape != (count,):
            raise ValueError(f"tissue_curves: {name} must be a scalar or hold {count} values, "
                             f"got shape {np.shape(value)}")
        if not np.all(np.isfinite(array)) or np.any(array < 0):
            raise ValueError(f"tissue_curves: {name} must be finite and >= 0")
        arrays.append(array)
    return arrays


def tissue_curves(aif, frame_interval_s: float, cbf, mtt_s, delay_s=0.0, dispersion_s=0.0,
                  oversample: int = 4) -> np.ndarray:
    """Enhancement curves (HU above baseline) of N voxels fed by one arterial input.

    The AIF is taken as piecewise linear between frames (0 before frame 0). D ⊗ R is the difference of two
    exponentials, M / (M - beta) (exp(-t/M) - exp(-t/beta)), and each is convolved with the AIF exactly at the
    delayed frame times by a first-order recursion (`_exponential_response`): no oversampling, no FFT, any
    fractional delay. Voxels are processed in chunks, so memory does not grow with N.

    Args:
        aif: [T] arterial enhancement in HU above baseline, one value per frame (frame 0 at t = 0).
        frame_interval_s: time between frames in s.
        cbf: [N] or scalar cerebral blood flow, mL/100g/min.
        mtt_s: [N] or scalar mean transit time in s (0 gives a flat curve).
        delay_s: [N] or scalar arrival delay of the AIF at the voxel in s (>= 0).
        dispersion_s: [N] or scalar dispersion time constant beta in s (0: none).
        oversample: accepted for compatibility and ignored (the result is exact without oversampling).

    Returns:
        float32 [N, T] enhancement in HU; N is the size of the largest parameter (1 if all are scalars).
    """
    aif = np.asarray(aif, np.float64)
    if aif.ndim != 1 or aif.size < 2 or not np.all(np.isfinite(aif)):
        raise ValueError(f"tissue_curves: aif must be a finite 1D curve of >= 2 frames, got shape {aif.shape}")
    if not (np.isfinite(frame_interval_s) and frame_interval_s > 0):
        raise ValueError(f"tissue_curves: frame_interval_s must be > 0, got {frame_interval_s}")
    del oversample  # the convolution is exact for a piecewise-linear AIF: nothing to oversample
    count = max(int(np.size(v)) for v in (cbf, mtt_s, delay_s, dispersion_s))
    cbf, mtt_s, delay_s, dispersion_s = _check_parameters(cbf, mtt_s, delay_s, dispersion_s, count)
    scale = (constants.RHO_G_PER_ML / constants.K_H) * cbf / (constants.PER_100G * constants.SECONDS_PER_MINUTE)
    out = np.zeros((count, aif.size), np.float32)
    for start in range(0, count, _CHUNK):
        part = slice(start, min(start + _CHUNK, count))
        mtt, beta, delay = mtt_s[part], dispersion_s[part], delay_s[part]
        live = mtt > 0
        mtt = np.where(live, mtt, 1.0)
        # D ⊗ R = M / (M - beta) (exp(-t/M) - exp(-t/beta)); beta within 1e-4 of M is moved off it.
        beta = np.where(np.abs(mtt - beta) < 1e-4 * mtt, mtt * (1.0 - 1e-4), beta)
        dispersed = beta > 1e-6
        curves = _exponential_response(aif, frame_interval_s, mtt, delay)
        if np.any(dispersed):
            safe_beta = np.where(dispersed, beta, 0.5 * mtt)  # any value off mtt: these rows are not used
            fast = _exponential_response(aif, frame_interval_s, safe_beta, delay)
            gain = (mtt / (mtt - safe_beta))[:, None]
            curves = np.where(dispersed[:, None], gain * (curves - fast), curves)
        out[part] = np.where(live[:, None], curves * scale[part, None], 0.0)
    return out


def transport(aif, frame_interval_s: float, delay_s=0.0, dispersion_s=0.0, oversample: int = 4) -> np.ndarray:
    """The AIF delayed and dispersed (unit-area kernel): what reaches a downstream vessel, e.g. a venous
    outflow curve or a collateral-fed artery. Same area as `aif` (when the window holds the whole curve).

    Args:
        aif: [T] arterial enhancement in HU, one value per frame.
        frame_interval_s: time between frames in s.
        delay_s: [N] or scalar delay in s.
        dispersion_s: [N] or scalar dispersion time constant in s (0: none).
        oversample: fine-grid steps per frame.

    Returns:
        float32 [N, T] in HU.
    """
    # A residue of vanishing MTT is a unit impulse of area MTT; CBF is chosen so that the gain is 1.
    mtt_s = 1e-6
    cbf = constants.PER_100G * constants.SECONDS_PER_MINUTE * constants.K_H / (constants.RHO_G_PER_ML * mtt_s)
    return tissue_curves(aif, frame_interval_s, cbf, mtt_s, delay_s, dispersion_s, oversample)


def true_tmax_s(mtt_s, delay_s=0.0, dispersion_s=0.0) -> np.ndarray:
    """Time of the maximum of the effective residue delay ⊗ D ⊗ R: the Tmax that an ideal deconvolution
    with the undispersed, undelayed AIF finds.

    (D ⊗ R)(t) ∝ exp(-t/MTT) - exp(-t/beta) peaks at t* = ln(MTT/beta) * MTT*beta / (MTT - beta)
    (t* = MTT when beta = MTT, 0 without dispersion).

    Args:
        mtt_s: mean transit time(s) in s (> 0).
        delay_s: arrival delay(s) in s.
        dispersion_s: dispersion time constant(s) beta in s (0: none).

    Returns:
        float64 array of the broadcast shape: Tmax in s.
    """
    mtt = np.asarray(mtt_s, np.float64)
    beta = np.asarray(dispersion_s, np.float64)
    delay = np.asarray(delay_s, np.float64)
    mtt, beta, delay = np.broadcast_arrays(mtt, beta, delay)
    safe_mtt = np.maximum(mtt, 1e-9)
    safe_beta = np.maximum(beta, 1e-9)
    close = np.abs(safe_mtt - safe_beta) < 1e-6 * safe_mtt
    difference = np.where(close, 1.0, safe_mtt - safe_beta)
    peak = np.where(close, safe_mtt, np.log(safe_mtt / safe_beta) * safe_mtt * safe_beta / difference)
    return delay + np.where(beta > 1e-6, peak, 0.0)


def apparent_cbf_fraction(mtt_s, dispersion_s=0.0) -> np.ndarray:
    """Peak of the dispersed residue D ⊗ R relative to R(0) = 1: the fraction of CBF that deconvolution with
    the undispersed AIF can recover (Calamante et al. 2000); 1 without dispersion.

    Args:
        mtt_s: mean transit time(s) in s (> 0).
        dispersion_s: dispersion time constant(s) beta in s (0: none).

    Returns:
        float64 array of the broadcast shape, in (0, 1].
    """
    mtt, beta = np.broadcast_arrays(np.asarray(mtt_s, np.float64), np.asarray(dispersion_s, np.float64))
    peak_time = true_tmax_s(mtt, 0.0, beta)
    safe_beta = np.maximum(beta, 1e-9)
    close = np.abs(mtt - safe_beta) < 1e-6 * mtt
    ratio = mtt / np.where(close, 1.0, mtt - safe_beta)
    fraction = np.where(close, peak_time / mtt * np.exp(-peak_time / mtt),
                        ratio * (np.exp(-peak_time / mtt) - np.exp(-peak_time / safe_beta)))
    return np.where(beta > 1e-6, fraction, 1.0)
