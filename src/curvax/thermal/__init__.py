"""Heat transport: exact heat flux of message-passing potentials, MD recording it, Green–Kubo.

Modules: `heat_flux` (edge, unfolded and Hardy routes), `md` (velocity Verlet / OBABO Langevin as
an (init, apply) pair, `simulate`), `green_kubo` (HFACF, cumulative κ, runs, standard error),
`workflow` (`GreenKuboConfig` + `run`: the `curvax gk` job). RTA κ from FC3: `curvax.phonons.fc3`.
"""
from curvax.thermal import green_kubo, heat_flux, md
from curvax.thermal.md import dynamics, maxwell_boltzmann, simulate
from curvax.thermal.workflow import GreenKuboConfig, run

__all__ = ["heat_flux", "md", "green_kubo", "dynamics", "simulate", "maxwell_boltzmann", "GreenKuboConfig", "run"]
