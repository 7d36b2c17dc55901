"""Relaxation fine-tuning: make a potential's own relaxation end in the DFT-relaxed structure.

One training step, for a batch of (perturbed start z₀, DFT-relaxed target) pairs:

    z_T(θ) = FIRE/SD unrolled T steps from z₀ with the potential θ     (`curvax.relax.relax`)
    L(θ)   = mean_b [w_x L_x + w_q D_q + w_a L_a + w_V L_V (+ w_E L_E)](z_T, target)   (`curvax.relax.metrics`)
             + w_F · mean |F_θ(z₀) − F_base(z₀)|²     (`anchor_weight`, co-training against forgetting:
               the base model's own forces on the training starts as pseudo-labels [eV²/Å²])
    θ ← optax update of ∇_θ L, by BPTT, checkpointed BPTT or implicit differentiation
        (`grad_mode` → an adjoint of `curvax.relax.adjoints`); EMA of θ kept for evaluation and saving.

The published method (Dramko et al., "On the finetuning of MLIPs through the lens of iterated
maps with BPTT", arXiv:2512.01067, 2025): `method: sd` (X ← X + η F, fixed cell), η learned
jointly with the model (`learn_step_size`: η = exp(s), s trained by Adam at
`step_size_learning_rate`; the learned η is reported and used to evaluate the fine-tuned model),
the mass-weighted D_q loss (`weights: {dq: 1, displacement: 0, lattice: 0, volume: 0}`) and full
BPTT (`grad_mode: bptt`).

All training pairs are padded to one shape (atoms, edges), so the training relaxation compiles
once (its graph is held fixed over the `relax_steps` unrolled steps). The training loop is
`curvax.finetune.training.fit` (atomic checkpoints, resume after a kill with an identical
continuation, metrics.csv/eval.csv, tqdm progress).

Evaluation (`evaluate_relaxations`, on the test split, base vs fine-tuned EMA model; full
relaxations by `relax.relax_systems`, whose graph follows the atoms): mass-weighted RMS
displacement [Å] from the DFT structure, fraction ending in the DFT basin, |V/V_DFT − 1|, steps
to reach fmax (capped at `eval_relax_steps`), converged fraction; forgetting check
(`forgetting`): |ΔE|/atom [eV/atom] and force MAE [eV/Å] of the fine-tuned vs the base model on
the test starting structures, and both models' energy MAE vs the DFT energies of the relaxed
structures.

Config: YAML (see `configs/relax-tune-nequix-mp.yaml`); `RelaxTuneConfig` documents every key.
Outputs in `workdir`: config.yaml, pairs-{train,validation,test}.extxyz, checkpoint.eqx,
metrics.csv, eval.csv, evaluation.json, model.nqx (Nequix) or model.json (Lennard-Jones).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from curvax import batch as batching
from curvax import parallel, precision
from curvax.batch import Batch
from curvax.config import at_least, field_defaults, path_field
from curvax.finetune import training
from curvax.io import atomic_write
from curvax.potentials import check_species, load_potential, save_potential
from curvax.relax import data as relax_data
from curvax.relax.adjoints import GRAD_MODES, Hybrid, from_name
from curvax.relax.driver import evaluate_batch, make_batch, relax, relax_systems, unbatch
from curvax.relax.metrics import LossWeights, batch_loss, relaxation_summary, rms_displacement, volume_error
from curvax.system import from_atoms


# --------------------------------------------------------------------------- config
@dataclasses.dataclass
class RelaxTuneConfig:
    model: str = path_field()  # `load_potential` spec: .nqx path / registered name, lj:sigma=..,epsilon=..,cutoff=..
    data: str = path_field()  # pymatgen JSON(.gz) or phonondb folder of DFT-relaxed crystals (perturbed here), or extxyz of pairs
    workdir: str = "runs/relax-tune"  # relative to the current directory
    max_atoms: int = 4  # skip larger DFT structures (JSON)
    limit: int | None = None  # read at most this many materials (JSON)
    n_perturbations: int = 1  # starting structures per material
    rattle: float = 0.05  # Å, Gaussian
    strain: float = 0.02  # uniform symmetric strain amplitude
    split: tuple = (0.8, 0.1, 0.1)  # train / validation / test, by material
    max_train: int | None = None  # cap on pairs per split (after the split)
    max_eval: int | None = 8
    steps: int = 20  # optimiser steps
    batch_size: int = 2
    relax_steps: int = 20  # unrolled relaxer steps per training relaxation
    fmax: float = 0.02  # eV/Å
    cell: bool = True
    method: str = "fire"  # fire | sd
    learn_step_size: bool = False  # sd only: train η = relaxer.step_size [Å²/eV] with the model
    step_size_learning_rate: float = 1e-2  # Adam on log η
    grad_mode: str = "checkpoint"  # bptt | checkpoint | implicit | hybrid (curvax.relax.adjoints)
    segment: int | None = None  # checkpoint segment length (checkpoint: default √relax_steps; hybrid: of the head)
    hybrid_unrolled_steps: int = 10  # hybrid: leading relaxer steps differentiated by BPTT (method sd)
    skin: float = 1.0  # Å, neighbour-list margin held fixed during a relaxation
    relaxer: dict = dataclasses.field(default_factory=dict)  # e.g. {dt: 0.1, max_step: 0.2}
    weights: dict = dataclasses.field(default_factory=dict)  # displacement, lattice, volume, energy
    anchor_weight: float = 0.0  # co-training against forgetting: loss + w_F · mean |F − F_base|² [eV²/Å²] on the training starts
    optimizer: dict = dataclasses.field(default_factory=lambda: {"name": "adam", "learning_rate": 1e-4})
    ema_decay: float = 0.9
    checkpoint_every: int = 5
    eval_every: int = 0  # validation relaxations every k steps (0: off)
    eval_relax_steps: int = 200  # relaxer steps for evaluation
    eval_fmax: float | None = None  # default: fmax
    basin_threshold: float = 0.05  # Å: a relaxation ends in the DFT basin if its D_q is below this
    seed: int = 0
    x64: bool = False
    devices: str | int = "all"  # data parallelism: "all" or a number of devices; batch_size is per device

    def validate(self, where="config"):
        if self.method not in ("fire", "sd"):
            raise ValueError(f"{where}: method must be fire or sd, got {self.method!r}")
        if self.learn_step_size and self.method != "sd":
            raise ValueError(f"{where}: learn_step_size needs method: sd (the step size of X ← X + η F)")
        step = self.relaxer.get("step_size", 0.01)
        if not self.step_size_learning_rate > 0 or isinstance(step, bool) or not isinstance(step, (int, float)) \
                or not step > 0:
            raise ValueError(f"{where}: step_size_learning_rate and relaxer step_size must be positive numbers, "
                             f"got {self.step_size_learning_rate!r} and {step!r}")
        parallel.device_count(self.devices, where)
        if self.grad_mode == "hybrid" and self.method != "sd":
            raise ValueError(f"{where}: grad_mode hybrid needs method: sd (its tail model is X ← X + η F)")
        if self.grad_mode not in GRAD_MODES:
            raise ValueError(f"{where}: grad_mode must be one of {', '.join(GRAD_MODES)}, got {self.grad_mode!r}")
        unknown = set(self.weights) - set(LossWeights._fields)
        if unknown:
            raise ValueError(f"{where}: unknown loss weights {sorted(unknown)}; known: {list(LossWeights._fields)}")
        at_least(where, self, 1, "steps", "batch_size", "relax_steps", "eval_relax_steps", "max_atoms", "hybrid_unrolled_steps",
                 "n_perturbations", "checkpoint_every", "segment", "limit", "max_train", "max_eval")
        at_least(where, self, 0, "rattle", "strain", "skin", "eval_every", "seed", "anchor_weight")
        if not self.fmax > 0 or (self.eval_fmax is not None and not self.eval_fmax > 0):
            raise ValueError(f"{where}: fmax and eval_fmax must be positive [eV/Å]")
        if not self.basin_threshold > 0:
            raise ValueError(f"{where}: basin_threshold must be positive [Å], got {self.basin_threshold!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"{where}: ema_decay must be in [0, 1), got {self.ema_decay!r}")
        split = list(self.split)
        if len(split) != 3 or not all(isinstance(x, (int, float)) and x >= 0 for x in split) or sum(split) <= 0:
            raise ValueError(f"{where}: split must be three fractions ≥ 0 (train, validation, test), got {split!r}")

    @property
    def step_size(self) -> float:
        """η [Å²/eV] of steepest descent: `relaxer.step_size` (the relaxer's default 0.01); the
        starting value when it is learned."""
        return float(self.relaxer.get("step_size", 0.01))

    @property
    def adjoint(self):
        """The `curvax.relax.adjoints` object of `grad_mode` (and `segment`; hybrid: the head length
        and the steepest-descent step size η of its tail model)."""
        return from_name(self.grad_mode, self.segment, self.hybrid_unrolled_steps, self.step_size)


class Relaxation(eqx.Module):
    """What relaxation fine-tuning trains: the potential and, with `learn_step_size`, the
    steepest-descent step size η = exp(log_step_size) [Å²/eV] (None: η is the config's)."""

    potential: object
    log_step_size: jnp.ndarray | None = None

    def relaxer(self, settings: dict) -> dict:
        """Relaxer settings with the learned η in place of settings["step_size"]."""
        if self.log_step_size is None:
            return dict(settings)
        return {**settings, "step_size": jnp.exp(self.log_step_size)}

    def step_size(self) -> float | None:
        return None if self.log_step_size is None else float(jnp.exp(self.log_step_size))


def make_optimizer(cfg: RelaxTuneConfig):
    """The potential's optax chain (`training.make_optimizer`); with `learn_step_size` log η is
    updated by its own Adam (`optax.multi_transform`)."""
    model_opt = training.make_optimizer(training.OptimizerConfig(**{"total_steps": cfg.steps, **cfg.optimizer}))
    if not cfg.learn_step_size:
        return model_opt

    def labels(params):
        return Relaxation(jax.tree.map(lambda _: "potential", params.potential), "step_size")

    return optax.multi_transform({"potential": model_opt, "step_size": optax.adam(cfg.step_size_learning_rate)},
                                 labels)


# --------------------------------------------------------------------------- data
class PairSet(NamedTuple):
    """Padded (start, target) batches (`curvax.batch.Batch`, leading axis B), DFT energies (B,) [eV];
    with `anchor_weight`, the base model's forces on the starts (B, N, 3) [eV/Å]."""

    start: Batch
    target: Batch
    energy: jnp.ndarray
    base_forces: jnp.ndarray | None = None

    def take(self, idx) -> "PairSet":
        idx = np.asarray(idx)
        return PairSet(batching.take(self.start, idx), batching.take(self.target, idx), self.energy[idx],
                       None if self.base_forces is None else self.base_forces[idx])


def load_splits(cfg: RelaxTuneConfig, potential) -> dict:
    """{'train','validation','test'} -> list of `relax_data.RelaxPair` (split by material)."""
    if Path(cfg.data).suffix in (".xyz", ".extxyz"):
        pairs = relax_data.read_pairs(cfg.data)
    else:  # keep only materials the model knows, then apply `limit`
        records = relax_data.load_dft_relaxed(cfg.data, max_atoms=cfg.max_atoms)
        known = set(getattr(potential, "elements", None) or [])
        records = [r for r in records if not known or set(r.atoms.numbers) <= known][: cfg.limit]
        pairs = relax_data.make_pairs(records, cfg.n_perturbations, cfg.rattle, cfg.strain, cfg.seed)
    for k, p in enumerate(pairs):
        check_species(potential, p.final.numbers, where=f"{cfg.data}: pair {k} ({p.material_id})")
    ids = relax_data.split_by_material([p.material_id for p in pairs], cfg.split, cfg.seed)
    out = {}
    for name, members in ids.items():
        members = set(members)
        chosen = [p for p in pairs if p.material_id in members]
        cap = cfg.max_train if name == "train" else cfg.max_eval
        out[name] = chosen[:cap] if cap is not None else chosen
    if not out["train"]:
        raise ValueError(f"{cfg.data}: no training pairs after the split {cfg.split}")
    return out


def pad_splits(splits: dict, cutoff: float, skin: float, dtype=None) -> dict:
    """Every non-empty split as (`PairSet`, material ids), all padded to one (atoms, edges) shape."""
    systems = {k: ([from_atoms(p.initial, dtype=dtype) for p in v], [from_atoms(p.final, dtype=dtype) for p in v])
               for k, v in splits.items() if v}
    probe = [make_batch([s], cutoff, skin) for a, b in systems.values() for s in a + b]
    n_atoms = max(int(b.system.positions.shape[1]) for b in probe)
    n_edges = int(np.ceil(1.1 * max(int(b.graph.mask.shape[1]) for b in probe)))
    out = {}
    for k, (a, b) in systems.items():
        out[k] = (PairSet(make_batch(a, cutoff, skin, n_atoms, n_edges), make_batch(b, cutoff, skin, n_atoms, n_edges),
                          jnp.asarray([p.energy for p in splits[k]], dtype=dtype)),
                  [p.material_id for p in splits[k]])
    return out


# --------------------------------------------------------------------------- loss and evaluation
def make_loss(cfg: RelaxTuneConfig):
    """loss_fn(model, PairSet, key) -> (L, metrics) for `training.make_update`."""
    weights = LossWeights(**cfg.weights)

    def loss_fn(model: Relaxation, pairs: PairSet, key):
        relaxer = model.relaxer(cfg.relaxer)
        adjoint = cfg.adjoint
        if isinstance(adjoint, Hybrid):  # its tail model steps with the relaxation's (learned) η
            adjoint = dataclasses.replace(adjoint, step_size=relaxer.get("step_size", cfg.step_size))
        r = relax(model.potential, pairs.start, cell=cfg.cell, method=cfg.method, steps=cfg.relax_steps,
                  fmax=cfg.fmax, adjoint=adjoint, skin=cfg.skin, **relaxer)
        t = pairs.target.system
        mask = pairs.target.node_mask
        loss = batch_loss(r, t.positions, t.cell, t.numbers, mask,
                          ref_energy=pairs.energy if weights.energy else None, weights=weights)
        rms = jax.vmap(rms_displacement)(r.positions, r.cell, t.positions, t.cell, t.numbers, mask)
        dv = jax.vmap(volume_error)(r.cell, t.cell)
        metrics = {"rms_displacement": jnp.mean(rms), "abs_volume_error": jnp.mean(jnp.abs(dv)),
                   "converged": jnp.mean(r.converged.astype(loss.dtype)),
                   "graph_ok": jnp.mean(r.graph_ok.astype(loss.dtype))}
        if cfg.anchor_weight:  # co-training against forgetting: stay near the base model's forces
            anchor = _force_msd(_energies_forces(model.potential, pairs.start)[1], pairs.base_forces,
                                pairs.start.node_mask)
            loss = loss + cfg.anchor_weight * anchor
            metrics["anchor_force_rms"] = jnp.sqrt(anchor)
        if model.log_step_size is not None:
            metrics["step_size"] = jnp.exp(model.log_step_size)
        return loss, metrics

    return loss_fn


def evaluate_relaxations(model: Relaxation, pairs: PairSet, cfg: RelaxTuneConfig, ids=None, progress=None) -> dict:
    """Relax the starts to `eval_fmax` (no gradients; a learned η is used) with
    `relax.relax_systems` — one structure per call, the graph re-allocated whenever an atom has
    moved past the skin, so no pair within the cutoff is missed however far the atoms travel —
    and report per structure the mass-weighted RMS displacement D_q [Å] from the DFT structure,
    V/V_DFT − 1, steps and convergence; plus their means and the fraction "in_basin" of
    relaxations ending in the DFT basin (D_q < `basin_threshold`). `progress(n)`: as in
    `relax_systems` (steps of the budget used)."""
    relaxer = dict(cfg.relaxer)
    if model.step_size() is not None:
        relaxer["step_size"] = model.step_size()
    relaxed, info = relax_systems(model.potential, unbatch(pairs.start.system, pairs.start), cell=cfg.cell,
                                  steps=cfg.eval_relax_steps, fmax=cfg.eval_fmax or cfg.fmax, method=cfg.method,
                                  skin=cfg.skin, chunk=cfg.eval_relax_steps, progress=progress, **relaxer)
    targets = unbatch(pairs.target.system, pairs.target)
    rms = np.array([float(rms_displacement(r.positions, r.cell, t.positions, t.cell, t.numbers,
                                           jnp.ones(len(t.numbers), bool))) for r, t in zip(relaxed, targets)])
    dv = np.array([float(volume_error(r.cell, t.cell)) for r, t in zip(relaxed, targets)])
    n, conv = info["n_steps"], info["converged"]
    return {**relaxation_summary(rms, dv, n, conv), "in_basin": float(np.mean(rms < cfg.basin_threshold)),
            "per_structure": {"material_id": list(ids or []), "rms_displacement": rms.tolist(),
                              "volume_error": dv.tolist(), "steps": n.tolist(), "converged": conv.tolist()}}


def _energies_forces(potential, batch: Batch):
    ev = evaluate_batch(potential, batch)
    return ev.energy, ev.forces


def _forces_in_batches(potential, batch: Batch, size: int):
    """Forces (B, N, 3) [eV/Å] on every structure of `batch`, `size` structures per call."""
    return jnp.asarray(batching.map_in_chunks(lambda b: _energies_forces(potential, b)[1], batch, size))


def _force_msd(forces, reference, node_mask):
    """Mean squared force difference over real atoms and components [eV²/Å²]."""
    m = node_mask[..., None].astype(forces.dtype)
    return jnp.sum((forces - reference) ** 2 * m) / (3 * jnp.sum(m))


def forgetting(base, tuned, pairs: PairSet) -> dict:
    """Fine-tuned vs base model on the (perturbed) test starts: mean |ΔE|/N [eV/atom], force MAE
    [eV/Å]; and each model's energy MAE vs DFT on the relaxed structures [eV/atom]."""
    n = np.asarray(pairs.start.n_atoms, dtype=float)
    m = np.asarray(pairs.start.node_mask)[..., None]
    e0, f0 = (np.asarray(a, float) for a in _energies_forces(base, pairs.start))
    e1, f1 = (np.asarray(a, float) for a in _energies_forces(tuned, pairs.start))
    out = {"energy_change_eV_per_atom": float(np.mean(np.abs(e1 - e0) / n)),
           "force_change_mae_eV_A": float(np.sum(np.abs(f1 - f0) * m) / (3 * np.sum(m)))}
    e_dft = np.asarray(pairs.energy, float)
    if np.all(np.isfinite(e_dft)):
        for name, pot in (("base", base), ("tuned", tuned)):
            e = np.asarray(_energies_forces(pot, pairs.target)[0], float)
            out[f"{name}_energy_mae_vs_dft_eV_per_atom"] = float(np.mean(np.abs(e - e_dft) / n))
    return out


# --------------------------------------------------------------------------- driver
def run(cfg: RelaxTuneConfig, progress: bool = True, max_seconds: float | None = None,
        restart: bool = False) -> dict:
    """Fine-tune (resuming from workdir if the settings are unchanged, `training.prepare_workdir`;
    `restart` starts afresh) and evaluate; returns the evaluation dict."""
    record = {**dataclasses.asdict(cfg), "model_sha256": training.file_fingerprint(cfg.model),
              "data_sha256": training.file_fingerprint(cfg.data)}
    # evaluation settings may change between runs of one training (a rerun re-evaluates)
    workdir = training.prepare_workdir(cfg.workdir, record, cfg.steps, restart,
                                       may_change=("steps", "workdir", "eval_relax_steps", "eval_fmax", "basin_threshold"),
                                       defaults=field_defaults(RelaxTuneConfig))
    dtype = precision.dtype_for(cfg.x64)
    base = load_potential(cfg.model, dtype)
    splits = load_splits(cfg, base)
    for name, pairs in splits.items():
        if pairs:
            relax_data.write_pairs(workdir / f"pairs-{name}.extxyz", pairs)
    sets = pad_splits(splits, base.cutoff, cfg.skin, dtype)
    train, _ = sets["train"]
    if cfg.anchor_weight:
        train = train._replace(base_forces=_forces_in_batches(base, train.start, cfg.batch_size))
    print("pairs: " + ", ".join(f"{k} {len(v[1])}" for k, v in sets.items())
          + f"; padded to {train.start.system.positions.shape[1]} atoms / {train.start.graph.mask.shape[1]} edges",
          flush=True)
    optimizer = make_optimizer(cfg)
    model = Relaxation(base, jnp.log(jnp.asarray(cfg.step_size, dtype)) if cfg.learn_step_size else None)
    state, static = training.init_state(model, optimizer)
    mesh = parallel.data_mesh(cfg.devices)
    update = training.make_update(make_loss(cfg), optimizer, cfg.ema_decay, mesh)
    batch_size = cfg.batch_size * (1 if mesh is None else mesh.devices.size)

    def step_fn(state, static, step, key):
        idx = training.batch_indices(int(train.energy.shape[0]), batch_size, step, cfg.seed)
        return update(state, static, train.take(idx), key)

    val = sets.get("validation")

    def validate(state):
        r = evaluate_relaxations(training.combine(state.ema, static), val[0], cfg)
        return {f"val_{k}": v for k, v in r.items() if k != "per_structure"}

    eval_fn = validate if val is not None and cfg.eval_every else None
    state = training.fit(state, static, step_fn, cfg.steps, workdir, cfg.checkpoint_every, eval_fn=eval_fn,
                         eval_every=cfg.eval_every, seed=cfg.seed, progress=progress, max_seconds=max_seconds,
                         desc="relax-tune")
    tuned = training.combine(state.ema, static)
    result = {"steps": int(state.step)}
    if int(state.step) < cfg.steps:
        print(f"stopped at step {int(state.step)}/{cfg.steps} (time limit); run again to resume", flush=True)
        return result
    result["model"] = str(save_potential(tuned.potential, workdir / "model"))
    if cfg.learn_step_size:
        result["step_size"] = {"initial": cfg.step_size, "learned": tuned.step_size()}  # Å²/eV
    result["eval_set"] = next(k for k in ("test", "validation", "train") if k in sets)
    test, ids = sets[result["eval_set"]]
    for key, label, model in (("before", "base", Relaxation(base)), ("after", "fine-tuned", tuned)):
        with tqdm(total=len(test.start.n_atoms) * cfg.eval_relax_steps, unit="step", disable=not progress,
                  desc=f"relaxing the {result['eval_set']} starts, {label} model") as bar:
            result[key] = evaluate_relaxations(model, test, cfg, ids, progress=bar.update)
    result["forgetting"] = forgetting(base, tuned.potential, test)
    result["change"] = per_structure_change(result["before"], result["after"])
    atomic_write(workdir / "evaluation.json", json.dumps(result, indent=2))
    return result


def per_structure_change(before: dict, after: dict) -> dict:
    """Medians of D_q [Å] before/after and the fraction of structures whose D_q and |ΔV/V|
    went down, from two `evaluate_relaxations` results on the same starts."""
    b, a = before["per_structure"], after["per_structure"]
    d0, d1 = np.asarray(b["rms_displacement"]), np.asarray(a["rms_displacement"])
    v0, v1 = np.abs(b["volume_error"]), np.abs(a["volume_error"])
    return {"median_rms_displacement": [float(np.median(d0)), float(np.median(d1))],
            "fraction_rms_displacement_improved": float(np.mean(d1 < d0)),
            "fraction_volume_error_improved": float(np.mean(v1 < v0))}


def summary(result: dict) -> str:
    """Human-readable before/after table of `run`'s result."""
    if "before" not in result:
        return f"fine-tuning incomplete ({result['steps']} steps)"
    change = per_structure_change(result["before"], result["after"])
    rows = [f"{result['eval_set']} set ({len(result['before']['per_structure']['material_id'])} relaxations):",
            f"{'':8s} {'D_q mean [Å]':>13s} {'median':>8s} {'in basin':>9s} {'|ΔV/V|':>9s} {'steps':>7s} "
            f"{'converged':>10s}"]
    for j, k in enumerate(("before", "after")):
        r = result[k]
        rows.append(f"{k:8s} {r['rms_displacement']:13.4f} {change['median_rms_displacement'][j]:8.4f} "
                    f"{r['in_basin']:9.2f} {r['abs_volume_error']:9.4f} {r['steps']:7.1f} "
                    f"{r['converged']:10.2f}")
    rows.append("change  " + ", ".join(f"{label} {100 * (result['after'][k] / result['before'][k] - 1):+.0f} %"
                                        for k, label in (("rms_displacement", "D_q"), ("abs_volume_error", "|ΔV/V|"))
                                        if result["before"][k])
                + f"; improved: D_q {change['fraction_rms_displacement_improved']:.0%} of structures, "
                  f"|ΔV/V| {change['fraction_volume_error_improved']:.0%}")
    if "step_size" in result:
        rows.append("steepest-descent step size η [Å²/eV]: {initial:.4g} → {learned:.4g} (learned)".format(
            **result["step_size"]))
    rows.append("forgetting: " + ", ".join(f"{k} {v:.4g}" for k, v in result["forgetting"].items()))
    rows.append(f"model: {result['model']}")
    return "\n".join(rows)
