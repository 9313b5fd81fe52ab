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
import scipy.fft

from strokenet_tf.perfusion import constants

# Voxels per FFT chunk: [chunk, frequencies] complex64 arrays of ~16 MB keep 500k voxels well under 1 GB.
_CHUNK = 8192


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


def _exponential_response(omega: np.ndarray, tau: np.ndarray, dt: float, length: int) -> np.ndarray:
    """DFT of the exact response of exp(-t/tau) to a piecewise-linear input on a grid of step dt.

    For the hat-function basis of a piecewise-linear signal the convolution with exp(-t/tau) at the grid
    points has weights g[0] = tau - tau^2/dt (1 - q), g[k] = tau^2/dt (1 - q)^2 q^(k-1) (k >= 1), q =
    exp(-dt/tau); they sum to tau (the area is exact). The kernel is truncated after `length` samples,
    which only drops what would wrap around into the first `length` output samples.

    Args:
        omega: [frequencies] angular frequency of the DFT bins, radians per sample.
        tau: [voxels] time constants in s (> 0).
        dt: grid step in s.
        length: kernel samples kept.

    Returns:
        [voxels, frequencies] complex64 DFT of the weights g.
    """
    tau = tau.astype(np.float32)[:, None]
    one_minus_q = -np.expm1(-dt / tau)
    q = 1.0 - one_minus_q
    g0 = tau - tau**2 / dt * one_minus_q
    first = tau**2 / dt * one_minus_q**2
    cos, sin = np.cos(omega)[None, :], np.sin(omega)[None, :]
    # sum_{k>=1} first q^(k-1) z^k = first (z - q) / |1 - q z|^2 with z = e^{-i omega}: real arithmetic only.
    scale = first / (1.0 + q * q - 2.0 * q * cos)
    response = np.empty(scale.shape, np.complex64)
    response.real = g0 + scale * (cos - q)
    response.imag = -scale * sin
    cut = q ** (length - 1)
    if np.max(cut) > 1e-7:
        # Truncation after `length` samples: the tail times (1 - (q z)^(length-1)).
        tail = response - g0
        response -= tail * (cut * np.exp(-1j * omega * (length - 1))[None, :]).astype(np.complex64)
    return response


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

    The AIF is taken as piecewise linear between frames and resampled `oversample` times finer; the
    exponential dispersion and residue kernels are applied exactly for such inputs in the frequency domain
    on a zero-padded grid (no wrap-around); the delay is applied by linear interpolation on the fine grid
    when the frames are read back. Voxels are processed in chunks (memory stays ~100 MB for any N).

    Args:
        aif: [T] arterial enhancement in HU above baseline, one value per frame (frame 0 at t = 0).
        frame_interval_s: time between frames in s.
        cbf: [N] or scalar cerebral blood flow, mL/100g/min.
        mtt_s: [N] or scalar mean transit time in s (0 gives a flat curve).
        delay_s: [N] or scalar arrival delay of the AIF at the voxel in s (>= 0).
        dispersion_s: [N] or scalar dispersion time constant beta in s (0: none).
        oversample: fine-grid steps per frame.

    Returns:
        float32 [N, T] enhancement in HU; N is the size of the largest parameter (1 if all are scalars).
    """
    aif = np.asarray(aif, np.float64)
    if aif.ndim != 1 or aif.size < 2 or not np.all(np.isfinite(aif)):
        raise ValueError(f"tissue_curves: aif must be a finite 1D curve of >= 2 frames, got shape {aif.shape}")
    if not (np.isfinite(frame_interval_s) and frame_interval_s > 0) or int(oversample) < 1:
        raise ValueError(f"tissue_curves: frame_interval_s must be > 0 and oversample >= 1, got "
                         f"{frame_interval_s}, {oversample}")
    count = max(int(np.size(v)) for v in (cbf, mtt_s, delay_s, dispersion_s))
    cbf, mtt_s, delay_s, dispersion_s = _check_parameters(cbf, mtt_s, delay_s, dispersion_s, count)
    frames, oversample = aif.size, int(oversample)
    dt = frame_interval_s / oversample
    length = (frames - 1) * oversample + 1
    fine_aif = np.interp(np.arange(length) * dt, np.arange(frames) * frame_interval_s, aif)
    n_fft = scipy.fft.next_fast_len(2 * length, real=True)
    aif_spectrum = scipy.fft.rfft(fine_aif, n_fft).astype(np.complex64)
    omega = (2.0 * np.pi * np.arange(n_fft // 2 + 1) / n_fft).astype(np.float32)
    scale = (constants.RHO_G_PER_ML / constants.K_H) * cbf / (constants.PER_100G * constants.SECONDS_PER_MINUTE)
    frame_times = np.arange(frames) * frame_interval_s
    out = np.zeros((count, frames), np.float32)
    for start in range(0, count, _CHUNK):
        part = slice(start, min(start + _CHUNK, count))
        mtt, beta = mtt_s[part], dispersion_s[part]
        live = mtt > 0
        spectrum = aif_spectrum[None, :] * _exponential_response(omega, np.where(live, mtt, 1.0), dt, length)
        dispersed = beta > 1e-6
        if np.any(dispersed):
            response = _exponential_response(omega, np.where(dispersed, beta, 1.0), dt, length) / np.where(
                dispersed, beta, 1.0)[:, None]
            spectrum *= np.where(dispersed[:, None], response, 1.0)
        fine = scipy.fft.irfft(spectrum, n_fft, axis=1, workers=2)[:, :length]
        position = ((frame_times[None, :] - delay_s[part, None]) / dt).astype(np.float32)
        index = np.floor(position).astype(np.int64)
        weight = position - index
        valid = index >= 0
        low = np.clip(index, 0, length - 1)
        high = np.clip(index + 1, 0, length - 1)
        rows = np.arange(fine.shape[0])[:, None]
        values = fine[rows, low] * (1.0 - weight) + fine[rows, high] * weight
        out[part] = np.where(valid & live[:, None], values * scale[part, None], 0.0)
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
