"""Jit-able molecular dynamics recording the heat flux: velocity Verlet (NVE) and Langevin (NVT).

Units: positions Å, velocities Å/fs, time step fs, masses amu (from ASE), energies eV,
heat flux eV·Å/fs (extensive, see `curvax.thermal.heat_flux`). Accelerations a = F/m · FS2 [Å/fs²]
with FS2 = (ASE time units per fs)².

One step (OBABO splitting; with friction γ = 0 the O steps are skipped and this is exactly
velocity Verlet, time reversible and symplectic):

    O  v ← c v + √(1 − c²) √(k_B T / m) ξ,  c = exp(−γ dt/2)      (Langevin, half step)
    B  v ← v + (dt/2) a(x)
    A  x ← x + dt v,  force pass at the new x
    B  v ← v + (dt/2) a(x)
    O  (as above)

Every `sample_every` steps the heat flux J(x, v) of the current state is evaluated by the
chosen route (`heat_flux.heat_flux(...).apply`) and recorded with the energies. J cannot share
the step's force pass (it needs the final velocities, which need those forces), so a recorded
frame costs sample_every force passes plus one flux evaluation.
Ref.: G. Bussi, M. Parrinello, Phys. Rev. E 75, 056707 (2007) (OBABO Langevin splitting);
B. Leimkuhler, C. Matthews, Molecular Dynamics (Springer, 2015).

    md = dynamics(potential, masses, dt=2.0)                    # NVE, unfolded flux
    state, traj = simulate(md, system, velocities, n_samples)   # host loop over jitted chunks
    traj.flux  # (n_samples, 3) eV Å/fs

Neighbour lists / unfoldings are allocated on the host (`md.init`); `simulate` runs `chunk`
frames per compiled call (`md.apply`: a loop over the steps; with neighbour-list reuse, an
outer loop over list builds around an inner loop of steps on one list), and if a chunk reports
overflow (neighbour capacity, or an atom moved more than skin/2 from where the unfolding was
built) it re-allocates at the chunk's start and repeats the chunk, so the trajectory is the
same as with an infinitely large list.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from ase import units

from curvax import derivatives, neighbors
from curvax.calculator import list_potential
from curvax.potentials.base import check_species
from curvax.system import System
from curvax.thermal.heat_flux import FS2, heat_flux, kinetic_energies

KB = units.kB  # eV/K


class DivergedError(ValueError):
    """The dynamics produced NaN/inf (time step too large, overlapping atoms)."""


class MDState(NamedTuple):
    """Dynamical state after a step (all jnp arrays)."""

    system: System
    velocities: jnp.ndarray  # (N, 3) Å/fs
    forces: jnp.ndarray  # (N, 3) eV/Å at system.positions
    key: jnp.ndarray  # PRNG key (Langevin noise)


class Frame(NamedTuple):
    """Per-frame record (every `sample_every` steps); stacked over frames (leading axis)."""

    potential_energy: jnp.ndarray  # () eV
    kinetic_energy: jnp.ndarray  # () eV
    flux: jnp.ndarray  # (3,) J = J_pot + J_conv [eV Å/fs]
    flux_potential: jnp.ndarray  # (3,) eV Å/fs
    overflow: jnp.ndarray  # () bool

    @property
    def total_energy(self):
        return self.potential_energy + self.kinetic_energy

    def temperature(self, n_atoms: int):
        """Instantaneous temperature 2 K / (3 N k_B) [K] (no constraint correction)."""
        return 2.0 * self.kinetic_energy / (3 * n_atoms * KB)


class Dynamics(NamedTuple):
    """(init, apply) of `dynamics` (`curvax.protocol`) and the integrator's constants."""

    init: Callable  # init(system, velocities, key=None) -> (MDState, aux)  (host side: allocation)
    apply: Callable  # apply(state, aux, n_samples) -> (MDState, Frame stacked (n_samples,))  (jit)
    masses: jnp.ndarray
    dt: float  # fs
    sample_every: int  # MD steps per recorded frame


def maxwell_boltzmann(masses, temperature, seed=0, remove_drift: bool = True):
    """Velocities [Å/fs] drawn at `temperature` [K] (ASE's Maxwell–Boltzmann), centre-of-mass drift
    removed and rescaled to exactly that instantaneous temperature (3N degrees of freedom)."""
    m = np.asarray(masses, dtype=np.float64)
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(len(m), 3)) * np.sqrt(KB * temperature / m)[:, None] * units.fs  # Å/fs
    if remove_drift:
        v -= (m[:, None] * v).sum(0) / m.sum()
    ke = 0.5 * np.sum(m[:, None] * v * v) / FS2
    if temperature > 0 and ke > 0:
        v *= np.sqrt(1.5 * len(m) * KB * temperature / ke)
    return v


def zero_momentum(velocities, masses):
    """Velocities with the centre-of-mass velocity removed (Langevin noise gives the cell a
    random drift; remove it before NVE heat-flux production)."""
    v = np.asarray(velocities)
    m = np.asarray(masses, dtype=v.dtype)[:, None]
    return v - (m * v).sum(0) / m.sum()


def dynamics(potential, masses, dt: float, flux_route: str = "unfolded", temperature: float = 0.0,
             friction: float = 0.0, sample_every: int = 1, skin: float = 1.0,
             capacity_multiplier: float = 1.25, neighbor_skin: float = 0.0,
             half_list: bool | None = None) -> Dynamics:
    """Factory of a velocity-Verlet (friction = 0: NVE) or Langevin (friction γ > 0 [1/fs] at
    `temperature` [K]) integrator with time step `dt` [fs], recording energies and the heat flux
    every `sample_every` steps.

    flux_route: "unfolded" (exact for message passing), "edge" (exact only for one-step
    potentials; cheap) or None (no flux, J recorded as NaN: equilibration).
    The steps use the plain periodic force pass; at each sample the flux route is evaluated once
    at the sampled (x, v) (it cannot share the force pass: J needs the final velocities, which
    need those forces). Cost per frame: sample_every force passes + one flux evaluation.
    skin [Å]: of the flux route's unfolding. neighbor_skin [Å]: the force pass's neighbour list
    is built at cutoff + neighbor_skin and rebuilt only when an atom has moved ≥ neighbor_skin/2
    since the last build (`neighbors.needs_rebuild`; fresh at every chunk start); 0 rebuilds it
    every step (best for message-passing models, which pay for the extra edges in every pass).
    half_list: the force pass of pair potentials on a half neighbour list (None: yes; as
    `curvax.calculator.calculator`).
    """

    masses = jnp.asarray(masses)
    sample_every = int(sample_every)
    if sample_every < 1:
        raise ValueError(f"sample_every must be ≥ 1, got {sample_every}")
    if dt <= 0:
        raise ValueError(f"time step must be > 0 fs, got {dt}")
    if not neighbor_skin >= 0:
        raise ValueError(f"neighbor_skin must be ≥ 0 Å, got {neighbor_skin}")
    flux = None if flux_route is None else heat_flux(potential, masses, flux_route, skin=skin,
                                                     capacity_multiplier=capacity_multiplier)
    force_potential = list_potential(potential, half_list)
    langevin = friction > 0.0
    if langevin and temperature <= 0.0:
        raise ValueError("Langevin thermostat needs temperature > 0 K")

    def forces_of(system, graph):
        """Energy, per-atom energies and forces of `system` on `graph`."""
        res = derivatives.properties(force_potential, system, graph, stress=False)
        return res["energy"], res["energies"], res["forces"]

    def init(system: System, velocities, key=None):
        """Allocate the neighbour list (and flux state); initial forces. Returns (state, aux)."""
        check_species(potential, system.numbers)
        spec, _ = neighbors.allocate(system, potential.cutoff + neighbor_skin, capacity_multiplier,
                                     half=getattr(force_potential, "half_list", False))
        fstate = None if flux is None else flux.init(system)
        v = jnp.asarray(velocities, system.positions.dtype)
        graph = eqx.filter_jit(neighbors.build)(system, spec)
        if bool(graph.overflow):
            raise RuntimeError("neighbour list overflowed right after allocation: "
                               + neighbors.explain_overflow(system, spec))
        _, _, f = eqx.filter_jit(forces_of)(system, graph)
        key = jax.random.PRNGKey(0) if key is None else key
        return MDState(system, v, f, key), (spec, fstate)

    @eqx.filter_jit
    def apply(state: MDState, aux, n_samples: int):
        spec, fstate = aux
        dtype = state.velocities.dtype
        mass = masses.astype(dtype)
        inv_m = FS2 / mass[:, None]  # a = F * inv_m  [Å/fs²]
        c = jnp.exp(-0.5 * friction * dt).astype(dtype)
        sigma = jnp.sqrt((1.0 - c * c) * KB * temperature * FS2 / mass)[:, None]  # Å/fs

        def o_step(v, key):
            if not langevin:
                return v, key
            key, sub = jax.random.split(key)
            return c * v + sigma * jax.random.normal(sub, v.shape, dtype), key

        template = state.system  # static pbc stays out of the loop carry (positions are carried)

        def kick_drift(c):
            """O, B and A of a step from c = (x, v, f, key): (new x, v after the half kick, key)."""
            x, v, f, key = c
            v, key = o_step(v, key)
            v = v + 0.5 * dt * f * inv_m
            return x + dt * v, v, key

        def frame(c, e, ei, ovf):
            """The record of the state c after its step (energies e, ei of its force pass)."""
            x, v = c[0], c[1]
            ke_i = kinetic_energies(v, mass)
            if flux is None:
                jpot = jnp.full(3, jnp.nan, dtype)
                jconv = jnp.sum((ke_i + ei)[:, None] * v, axis=0)
            else:
                hf = flux.apply(template._replace(positions=x), v, fstate)
                jpot, jconv, ovf = hf.flux_potential, hf.flux_convective, ovf | hf.overflow
            return Frame(e, jnp.sum(ke_i), jpot + jconv, jpot, ovf)

        n_steps = n_samples * sample_every

        def step(run, moved, graph, overflow):
            """The rest of a step (moved = `kick_drift` of it): force pass on `graph`, B and O;
            every `sample_every`-th step records its frame (with the overflow of the steps since
            the last frame). run = (steps done, carry, overflow, frames)."""
            i, c, ovf, frames = run
            x, v, key = moved
            e, ei, f = forces_of(template._replace(positions=x), graph)
            v = v + 0.5 * dt * f * inv_m
            v, key = o_step(v, key)
            c, i, ovf = (x, v, f, key), i + 1, ovf | overflow

            def record(frames):
                return jax.tree.map(lambda buf, y: buf.at[i // sample_every - 1].set(y), frames,
                                    frame(c, e, ei, ovf)), jnp.array(False)

            frames, ovf = jax.lax.cond(i % sample_every == 0, record, lambda fr: (fr, ovf), frames)
            return i, c, ovf, frames

        def rebuild_step(run):
            """A step on a list built at its new positions: (run, (graph, positions))."""
            moved = kick_drift(run[1])
            graph = neighbors.build(template._replace(positions=moved[0]), spec)
            return step(run, moved, graph, graph.overflow), (graph, moved[0])

        def reuse_then_rebuild(loop):
            """Steps on the list while `neighbors.needs_rebuild` allows it for the next step's
            positions, then one step with a new list (unless all steps are done). The reusing
            steps are an inner loop in which the graph is invariant: a list chosen by a `lax.cond`
            in every step, or carried through a scan per frame, made each step ≈ 1.2 ms (≈ 50 %)
            slower at 2 048 atoms, rebuilt or not."""
            run, (graph, ref) = loop

            def fresh(run):
                x = kick_drift(run[1])[0]
                return (run[0] < n_steps) & ~neighbors.needs_rebuild(
                    x, template.cell, ref, template.cell, potential.cutoff, neighbor_skin, template.pbc,
                    fixed_cell=True)

            run = jax.lax.while_loop(fresh, lambda run: step(run, kick_drift(run[1]), graph, graph.overflow), run)
            return jax.lax.cond(run[0] < n_steps, rebuild_step, lambda run: (run, (graph, ref)), run)

        c0 = (state.system.positions, state.velocities, state.forces, state.key)
        z = jnp.zeros((), dtype)
        empty = Frame(z, z, jnp.zeros(3, dtype), jnp.zeros(3, dtype), jnp.array(False))
        frames0 = jax.tree.map(lambda y: jnp.zeros((n_samples,) + y.shape, y.dtype), empty)
        run0 = (jnp.array(0), c0, jnp.array(False), frames0)
        if neighbor_skin > 0:  # fresh list at the start of each call
            graph0 = neighbors.build(state.system, spec)
            run = (run0[0], c0, graph0.overflow, frames0)
            run, _ = jax.lax.while_loop(lambda loop: loop[0][0] < n_steps, reuse_then_rebuild,
                                        (run, (graph0, state.system.positions)))
        else:
            run = jax.lax.fori_loop(0, n_steps, lambda _, run: rebuild_step(run)[0], run0)
        _, (x, v, f, key), _, frames = run
        return MDState(template._replace(positions=x), v, f, key), frames

    return Dynamics(init, apply, masses, float(dt), sample_every)


def simulate(md: Dynamics, system: System, velocities, n_samples: int, chunk: int = 100,
             key=None, progress=None, state=None):
    """Run `n_samples` frames (n_samples · sample_every steps) in jitted chunks of `chunk` frames.

    On overflow (neighbour capacity, or an atom moved more than skin/2 since the unfolding was
    built), keeps the frames before the first overflowing one (recomputed with the same
    allocation, hence identical), re-allocates there and goes on; the trajectory is the same as
    with an infinitely large list. Every distinct chunk length compiles once. `progress`: optional callable(n_frames_done) (e.g. a tqdm update). `state`: continue
    from an `MDState` instead of (system, velocities). Returns (final MDState, Frame as numpy
    arrays, stacked over frames).
    """
    if state is None:
        state, aux = md.init(system, velocities, key)
    else:
        state, aux = md.init(state.system, state.velocities, state.key)
    frames, done, fresh = [], 0, True
    while done < n_samples:
        k = min(chunk, n_samples - done)
        new, fr = md.apply(state, aux, k)
        if not (np.all(np.isfinite(np.asarray(fr.potential_energy)))
                and np.all(np.isfinite(np.asarray(new.system.positions)))):
            raise DivergedError(f"the MD diverged within frames {done + 1}–{done + k} (NaN/inf positions or "
                                f"energies): reduce the time step (dt = {md.dt} fs) or check the structure")
        bad = np.flatnonzero(np.asarray(fr.overflow))
        if bad.size:
            if bad[0] == 0:
                if fresh:
                    raise DivergedError(
                        "neighbour list / unfolding overflowed in the first frame after allocation (atoms "
                        f"moved more than skin/2 within {md.sample_every} steps): reduce the time step "
                        f"(dt = {md.dt} fs) or sample_every, or increase skin or capacity_multiplier")
                state, aux = md.init(state.system, state.velocities, state.key)
                fresh = True
                continue
            k = int(bad[0])  # frames before the first overflow are valid: redo just those
            new, fr = md.apply(state, aux, k)
        frames.append(jax.tree_util.tree_map(np.asarray, fr))
        state, done, fresh = new, done + k, False
        if bad.size:
            state, aux = md.init(state.system, state.velocities, state.key)
            fresh = True
        if progress is not None:
            progress(k)
    stacked = Frame(*[np.concatenate([getattr(f, n) for f in frames]) for n in Frame._fields])
    return state, stacked
