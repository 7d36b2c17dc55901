"""Green–Kubo analysis of heat-flux time series: HFACF, cumulative κ(t), averages over runs.

    κ_αβ(t) = 1 / (V k_B T²) ∫_0^t ⟨J_α(0) J_β(t')⟩ dt'        κ(t) = (κ_xx + κ_yy + κ_zz) / 3

with the extensive flux J [eV·Å/fs] (`curvax.thermal.heat_flux`; equivalently V/(k_B T²) ∫⟨j(0) j(t)⟩ with
the flux density j = J/V), V [Å³], T [K], t [fs]. Unit conversion:
1 eV²Å²/fs² · fs / (Å³ · eV/K · K²) = 1 eV/(Å·fs·K) = 1.602176634e6 W/(m·K).

Estimator (per run): the HFACF C(τ) = 1/(n−τ) Σ_t J(t) J(t+τ)ᵀ (unbiased, averaged over all time
origins, computed with FFTs), integrated with the trapezoidal rule. Runs (independent
trajectories) are averaged; the stated error of κ(t) is the standard error over runs,
std(κ_run(t), ddof=1)/√n_runs. The reported κ is κ(t_c) at a correlation time t_c given by the
user or, by default, at the first zero crossing of the run-averaged isotropic HFACF (a common
"first dip" choice; it under-estimates κ if the HFACF has long tails).
Ref.: M. S. Green, J. Chem. Phys. 22, 398 (1954); R. Kubo, J. Phys. Soc. Jpn. 12, 570 (1957);
F. Knoop, M. Scheffler, C. Carbogno, Phys. Rev. B 107, 224304 (2023) (GK for solids).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from ase import units

EV_PER_A_FS_K_TO_W_PER_M_K = units._e * 1e25  # 1 eV/(Å fs K) in W/(m K)


class GreenKubo(NamedTuple):
    """Result of `green_kubo` (numpy arrays; time axis first)."""

    time: np.ndarray  # (L,) lag τ [fs]
    hfacf: np.ndarray  # (L, 3, 3) run-averaged ⟨J_α(0) J_β(τ)⟩ [(eV Å/fs)²]
    kappa_tensor: np.ndarray  # (L, 3, 3) cumulative κ_αβ(t), run average [W/m-K]
    kappa: np.ndarray  # (L,) isotropic cumulative κ(t) = tr/3 [W/m-K]
    kappa_stderr: np.ndarray  # (L,) standard error of κ(t) over runs (NaN for one run)
    kappa_runs: np.ndarray  # (R, L) isotropic κ(t) per run
    cutoff_index: int  # index of the reported correlation time
    n_runs: int

    @property
    def correlation_time(self) -> float:
        return float(self.time[self.cutoff_index])

    @property
    def value(self) -> float:
        """κ(t_c) [W/m-K]."""
        return float(self.kappa[self.cutoff_index])

    @property
    def error(self) -> float:
        """Standard error over runs of κ(t_c) [W/m-K]."""
        return float(self.kappa_stderr[self.cutoff_index])


def hfacf(flux, max_lag: int | None = None) -> np.ndarray:
    """Unbiased time-origin-averaged autocorrelation C_αβ(τ) = ⟨J_α(t) J_β(t+τ)⟩_t of one run.

    flux: (n, 3) samples at equal spacing. Returns (max_lag, 3, 3); max_lag defaults to n // 2.
    """
    j = np.asarray(flux, dtype=np.float64)
    if j.ndim != 2 or j.shape[1] != 3:
        raise ValueError(f"heat flux must have shape (n_samples, 3), got {j.shape}")
    n = j.shape[0]
    max_lag = n // 2 if max_lag is None else int(max_lag)
    if not 1 <= max_lag <= n:
        raise ValueError(f"max_lag must be in [1, {n}], got {max_lag}")
    nfft = 1 << int(np.ceil(np.log2(2 * n)))
    f = np.fft.rfft(j, n=nfft, axis=0)  # (nfft/2+1, 3)
    corr = np.fft.irfft(np.conj(f)[:, :, None] * f[:, None, :], n=nfft, axis=0)[:max_lag]
    return corr / (n - np.arange(max_lag))[:, None, None]


def cumulative_kappa(acf, dt: float, volume: float, temperature: float) -> np.ndarray:
    """κ_αβ(t) [W/m-K] = 1/(V k_B T²) ∫_0^t C_αβ dt' (trapezoid) for C on lags k·dt [fs]."""
    if volume <= 0 or temperature <= 0 or dt <= 0:
        raise ValueError(f"volume, temperature and dt must be > 0 (got {volume}, {temperature}, {dt})")
    acf = np.asarray(acf, dtype=np.float64)
    integral = np.zeros_like(acf)
    integral[1:] = np.cumsum(0.5 * (acf[1:] + acf[:-1]) * dt, axis=0)
    return integral / (volume * units.kB * temperature ** 2) * EV_PER_A_FS_K_TO_W_PER_M_K


def green_kubo(fluxes, dt: float, volume: float, temperature: float, max_lag: int | None = None,
               correlation_time: float | None = None) -> GreenKubo:
    """Green–Kubo κ from heat-flux series of independent runs.

    fluxes: (R, n, 3) or a list of (n_r, 3) arrays, J [eV Å/fs] sampled every `dt` fs;
    volume [Å³]; temperature [K]; max_lag in samples (default: shortest run // 2);
    correlation_time [fs]: where to report κ (default: first zero of the averaged HFACF).
    """
    runs = [np.asarray(f, dtype=np.float64) for f in fluxes]
    if not runs:
        raise ValueError("no heat-flux runs given")
    if not all(np.all(np.isfinite(r)) for r in runs):
        raise ValueError("heat-flux series contains NaN/inf")
    n_min = min(len(r) for r in runs)
    max_lag = n_min // 2 if max_lag is None else min(int(max_lag), n_min)
    acfs = np.array([hfacf(r, max_lag) for r in runs])  # (R, L, 3, 3)
    kt_runs = np.array([cumulative_kappa(a, dt, volume, temperature) for a in acfs])
    k_runs = np.trace(kt_runs, axis1=2, axis2=3) / 3.0  # (R, L)
    acf = acfs.mean(0)
    time = np.arange(max_lag) * dt
    if len(runs) > 1:
        stderr = k_runs.std(axis=0, ddof=1) / np.sqrt(len(runs))
    else:
        stderr = np.full(max_lag, np.nan)
    if correlation_time is None:
        iso = np.trace(acf, axis1=1, axis2=2)
        neg = np.flatnonzero(iso <= 0)
        cut = int(neg[0]) if neg.size else max_lag - 1
    else:
        if correlation_time < 0:
            raise ValueError(f"correlation_time must be ≥ 0 fs, got {correlation_time}")
        cut = min(int(round(correlation_time / dt)), max_lag - 1)
    return GreenKubo(time, acf, kt_runs.mean(0), k_runs.mean(0), stderr, k_runs, cut, len(runs))
