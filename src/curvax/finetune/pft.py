"""Phonon fine-tuning (PFT) of a pretrained potential on DFT force constants, with co-training.

One training step (`step` counts these) =
    1 phonon update   on a batch of DFT supercells:  w_H·L_H (one HVP per structure, see
                      `curvax.finetune.losses`) + forces (DFT equilibrium: F* = 0) [+ stress where known]
    k upstream updates on E/F/S frames (real upstream files, or pseudo-labels of the frozen
                      base model on rattled/strained crystals when no upstream data is given)
Batches and random probes are pure functions of the step number, so a run killed at any
point resumes from its last atomic checkpoint and reproduces the uninterrupted run.

Data: DFT phonon sets (`phonon_train`) and/or a phonondb folder (`phonondb`, e.g. the Kyoto
phonondb in ../shared/data/phonondb), split *by formula* into training, validation and test
materials (`phonondb_split`): a fixed hash order, so the test materials never depend on the
training settings. Validation (every `eval_every` steps): phonon properties (ν_max, S, F, Cv at
`eval_temperature`, DFT geometry) of the EMA model on the validation materials, scored as
mean_p MAE_p(model) / MAE_p(base) (< 1: better than the base); with `select_best` the model
written is the EMA weights of the best validation score (early stopping).

Geometry (`phonon_geometry`): "dft" compares the model's Hessian with the DFT force constants
at the DFT supercell. "model_volume" first scales each training and validation cell
isotropically to the model's own zero pressure (solved on the primitive cell by
`relax.relax_volume`; fractional coordinates and the DFT force constants unchanged): each
functional at its own equilibrium volume; `model_volume_fraction` f moves the cell only part of
the way, lattice × s^f (f = 1: the model's volume, f = 0: the DFT geometry). It matters for PBEsol labels (phonondb) and a
PBE-trained model: the base Nequix MP expands phonondb's PBEsol cells by 0.5–3.4 % in lattice
constant (96 materials), and it is too stiff at the PBEsol geometry but too soft at its own
volume, so the two settings push the model in opposite directions (README: measured effect).

Cell (`phonon_cell`): "supercell" trains on the DFT supercells; "unitcell" on the unit cells with
the DFT force constants folded onto them (`phonons.fc2.unitcell_force_constants`, exact at the q
points commensurate with the unit cell), so simple crystals with 64–96-atom supercells train at
the cost of their 2–16-atom unit cells (README "Simple crystals").

Shapes (`phonon_shape_buckets`): the training structures are padded to that many shapes by
edge count (`batch.size_buckets`) and every phonon batch is drawn from one of them
(`training.batch_indices` with groups): one compiled step per shape, each structure padded to
its bucket's largest instead of the set's largest (the main job: 3.2 s per step instead of 6.3).

Config: a YAML file (see `configs/pft-nequix-mp.yaml`); `FinetuneConfig` documents every key.
Outputs in `workdir`: checkpoint.eqx, best.eqx, metrics.csv, eval.csv, config.yaml, split.json,
model.nqx (EMA weights; loads with `curvax.load_potential` and `nequix.model.load_model`).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ase.data import atomic_numbers
from ase.formula import Formula

from curvax import batch as batching
from curvax import parallel, precision
from curvax.batch import Batch, graph_of
from curvax.config import at_least, field_defaults, one_of, path_field
from curvax.finetune import efs_data, training
from curvax.finetune import evaluation as pft_eval
from curvax.finetune.losses import EFSWeights, batch_efs_loss, batch_phonon_loss
from curvax.io import atomic_write
from curvax.phonons.convert import phonopy_to_atoms
from curvax.phonons.data import (dataset_loader, dataset_name, list_datasets, load_phonopy_dataset, map_datasets,
                                 phonondb_entries)
from curvax.phonons.fc2 import unitcell_force_constants
from curvax.phonons.properties import COMPARED, compare, phonon_properties
from curvax.potentials import check_species, load_potential, save_potential
from curvax.relax import data as relax_data
from curvax.relax.coordinates import scaled_cell
from curvax.relax.driver import relax_volume
from curvax.system import from_atoms


PHONON_GEOMETRIES = ("dft", "model_volume")
PHONON_CELLS = ("supercell", "unitcell")


@dataclasses.dataclass
class FinetuneConfig:
    model: str = path_field()  # `load_potential` spec: .nqx path or registered name
    workdir: str = "runs/pft"  # relative to the current directory
    phonon_train: list = path_field(default_factory=list)  # data sets / folders (curvax.phonons.data)
    phonon_test: list = path_field(default_factory=list)  # held-out data sets for evaluation
    max_phonon_atoms: int = 64  # skip training supercells larger than this
    phonondb: str | None = path_field(default=None)  # phonondb folder (manifest.csv + materials/*.tar.lzma)
    phonondb_max_atoms: int = 40  # training materials: supercells of ≤ this many atoms
    phonondb_eval_max_atoms: int = 0  # validation/test materials: supercells ≤ this many atoms (0: phonondb_max_atoms)
    n_phonondb_test: int = 20  # held-out test materials (added to the report)
    n_phonondb_validation: int = 8  # validation materials (model selection / early stopping)
    n_phonondb_train: int = 0  # training materials (0: all the rest)
    phonondb_eval_max_displacements: int = 0  # validation/test materials: ≤ this many DFT displacements (0: any)
    n_probes: int = 1  # Hessian probe vectors per structure per step (one linearisation)
    phonon_geometry: str = "dft"  # dft | model_volume: where the model's Hessian meets the DFT one (see module doc)
    phonon_cell: str = "supercell"  # supercell | unitcell: train on the DFT supercells or on the unit cells with the
    # force constants folded onto them (max_phonon_atoms and phonondb_max_atoms then count unit-cell atoms)
    phonon_shape_buckets: int = 1  # pad the training structures to this many shapes by edge count (one compiled
    # phonon step each; `batch.size_buckets`): less padding per step for more compilations
    model_volume_fraction: float = 1.0  # model_volume only: lattice × s**fraction (s: the model's zero-pressure scale)
    remat_edges: int = 0  # > 0: the phonon step computes each interaction block's edge messages this many edges at a
    # time under jax.checkpoint (`Potential.rematerialised`): ≈ 1/3 of the peak memory, same gradient (128: benchmarks)
    select_best: bool = True  # write the EMA weights of the best validation score
    max_force_drift: float = 0.010  # eV/Å: a model drifting more on held-out upstream frames is not selected
    upstream_files: list = path_field(default_factory=list)  # extxyz / .db / vasprun.xml
    pseudo_label_structures: str | None = path_field(default=None)  # pymatgen JSON(.gz) list, used if no upstream files
    n_pseudo: int = 32
    max_pseudo_atoms: int = 8
    rattle: float = 0.05  # Å
    strain: float = 0.02
    steps: int = 40
    upstream_steps_per_phonon_step: int = 4
    phonon_batch_size: int = 2
    upstream_batch_size: int = 4
    hessian_sampling: str = "unit"  # unit | random
    loss: str = "mae"  # mae | mse
    w_hessian: float = 100.0
    w_phonon_efs: tuple = (0.0, 20.0, 5.0)  # energy, forces, stress on phonon data
    w_upstream_efs: tuple = (500.0, 200.0, 50.0)
    optimizer: dict = dataclasses.field(default_factory=lambda: {"name": "adamw", "learning_rate": 2e-4})
    ema_decay: float = 0.9
    checkpoint_every: int = 5
    eval_every: int = 10  # validation (held-out upstream E/F/S errors) every this many steps
    seed: int = 0
    x64: bool = False
    devices: str | int = "all"  # data parallelism: "all" local/global devices or a number; batch sizes are per device
    n_holdout: int = 8  # upstream frames held out of training, for the forgetting check
    n_relax_eval: int = 4  # perturbed DFT-relaxed crystals relaxed by each model (0: skip)
    eval_temperature: float = 300.0  # K
    eval_mesh: tuple = (10, 10, 10)
    eval_protocols: tuple = ("unrelaxed", "relaxed")
    eval_relax_max_atoms: int = 16  # relaxed protocol only for unit cells of ≤ this many atoms
    compare_models: list = path_field(default_factory=list)  # extra models for the table
    cv_fold: list = dataclasses.field(default_factory=list)  # [i, k]: leave fold i (0-based) of k of the training
    # materials out of training (`material_folds`); set per fold by `curvax finetune --cv k` (`finetune.crossval`)

    def validate(self, where="config"):
        opt_keys = {f.name for f in dataclasses.fields(training.OptimizerConfig)} - {"total_steps"}
        bad = sorted(set(self.optimizer or {}) - opt_keys)
        if bad:
            raise ValueError(f"{where}: unknown optimizer keys {bad}; known: {sorted(opt_keys)}")
        if self.phonon_cell not in PHONON_CELLS:
            raise ValueError(f"{where}: phonon_cell must be one of {PHONON_CELLS}, got {self.phonon_cell!r}")
        if self.phonon_geometry not in PHONON_GEOMETRIES:
            raise ValueError(f"{where}: phonon_geometry must be one of {PHONON_GEOMETRIES}, "
                             f"got {self.phonon_geometry!r}")
        if not 0 <= self.model_volume_fraction <= 1:
            raise ValueError(f"{where}: model_volume_fraction must be in [0, 1], got {self.model_volume_fraction!r}")
        at_least(where, self, 1, "steps", "phonon_batch_size", "upstream_batch_size", "n_probes", "checkpoint_every",
                 "max_phonon_atoms", "phonondb_max_atoms", "n_pseudo", "max_pseudo_atoms", "phonon_shape_buckets")
        at_least(where, self, 0, "upstream_steps_per_phonon_step", "remat_edges", "eval_every", "n_holdout", "n_relax_eval",
                 "n_phonondb_test", "n_phonondb_validation", "n_phonondb_train", "eval_relax_max_atoms",
                 "phonondb_eval_max_displacements", "phonondb_eval_max_atoms", "rattle", "strain", "w_hessian", "seed")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"{where}: ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if not self.eval_temperature > 0 or not self.max_force_drift > 0:
            raise ValueError(f"{where}: eval_temperature [K] and max_force_drift [eV/Å] must be positive")
        mesh = list(self.eval_mesh)
        if len(mesh) != 3 or not all(isinstance(m, int) and not isinstance(m, bool) and m > 0 for m in mesh):
            raise ValueError(f"{where}: eval_mesh must be three positive integers, got {self.eval_mesh!r}")
        for key in ("w_phonon_efs", "w_upstream_efs"):
            w = list(getattr(self, key))
            if len(w) != 3 or not all(isinstance(x, (int, float)) and x >= 0 for x in w):
                raise ValueError(f"{where}: {key} must be three weights ≥ 0 (energy, forces, stress), got {w!r}")
        fold = list(self.cv_fold)
        if fold and not (len(fold) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in fold)
                         and fold[1] >= 2 and 0 <= fold[0] < fold[1]):
            raise ValueError(f"{where}: cv_fold must be [i, k] with k ≥ 2 and 0 ≤ i < k, got {self.cv_fold!r}")
        parallel.check_devices(self.devices, where)  # the count is checked by `run` (no backend started here)
        one_of(where, "hessian_sampling", self.hessian_sampling, ("unit", "random"))
        one_of(where, "loss", self.loss, ("mae", "mse"))
        for protocol in self.eval_protocols:
            one_of(where, "eval_protocols entry", protocol, ("unrelaxed", "relaxed"))
        lr = (self.optimizer or {}).get("learning_rate", 1.0)
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
            raise ValueError(f"{where}: optimizer learning_rate must be a positive number, got {lr!r}")


def expand_datasets(paths) -> list[Path]:
    """Data set paths; a folder without phonopy files expands to every data set below it."""
    out = []
    for p in map(Path, paths):
        if p.is_dir() and not (p / "phonopy_disp.yaml").is_file():
            out.extend(list_datasets(p))
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"phonon data set not found: {p}")
    return out


def phonondb_split(root, max_atoms: int, n_test: int, n_validation: int, n_train: int = 0,
                   elements=None, eval_max_displacements: int | None = None,
                   eval_max_atoms: int | None = None, train_cell: str = "supercell") -> dict:
    """{"train", "validation", "test"} -> lists of phonondb archive paths, split by formula.

    Formulas (all polymorphs of one composition go together) are ordered by a fixed hash
    (`relax_data._unit_hash(0, formula)`, independent of any training setting); the first
    formulas give `n_test` test materials, the next `n_validation` validation materials, the
    rest (up to `n_train`, 0 = all) training materials. Test and validation materials are drawn
    from supercells of ≤ `eval_max_atoms` atoms (default `max_atoms`), training materials from
    supercells (`train_cell` "supercell") or unit cells ("unitcell") of ≤ `max_atoms` atoms; a
    formula held out for test or validation is never trained on, whatever its polymorphs' sizes,
    and the held-out materials do not depend on `train_cell`. With `eval_max_displacements` (evaluating a material costs one HVP per
    DFT displacement and model) only formulas whose materials all have at most that many
    displacements are drawn for validation and test. Materials with elements outside `elements`
    (the model's) are left out."""
    if train_cell not in PHONON_CELLS:
        raise ValueError(f"train_cell must be one of {PHONON_CELLS}, got {train_cell!r}")
    eval_max_atoms = eval_max_atoms or max_atoms
    listed = max(max_atoms, eval_max_atoms) if train_cell == "supercell" else eval_max_atoms
    train_size = (lambda e: e.n_supercell) if train_cell == "supercell" else (lambda e: e.n_unitcell)
    entries = phonondb_entries(root)
    if elements is not None:
        known = set(int(z) for z in elements)
        entries = [e for e in entries if {atomic_numbers[el] for el in Formula(e.formula).count()} <= known]
    by_formula = {}
    for e in entries:
        by_formula.setdefault(_reduced_formula(e.formula), []).append(e)
    order = sorted(by_formula, key=lambda f: relax_data._unit_hash(0, f))
    out, sizes = {"test": [], "validation": [], "train": []}, (n_test, n_validation, n_train or 10 ** 9)
    part = 0
    for f in order:
        group = by_formula[f]
        listed_group = [e for e in group if e.n_supercell <= listed]
        if not listed_group and train_cell == "supercell":
            continue
        while part < 2 and len(out[("test", "validation")[part]]) >= sizes[part]:
            part += 1
        evaluable = listed_group and all(e.n_supercell <= eval_max_atoms for e in listed_group) and (
            not eval_max_displacements or all(e.n_displacements <= eval_max_displacements for e in listed_group))
        if part < 2 and evaluable:
            out[("test", "validation")[part]].extend(e.path for e in listed_group)
        else:
            trainable = [e.path for e in group if train_size(e) <= max_atoms]
            out["train"].extend(trainable[: max(0, sizes[2] - len(out["train"]))])
    return out


def _reduced_formula(formula: str) -> str:
    return Formula(formula).reduce()[0].format("metal")


class PhononBucket(NamedTuple):
    """Training structures padded to one shape (one compiled phonon step)."""
    index: np.ndarray  # (n,) their positions in the training set (its `names`)
    structures: Batch  # (n, ...) padded structures
    fc: np.ndarray     # (n, N_pad, N_pad, 3, 3) DFT force constants [eV/Å²], zero on padded atoms


def _read_training_set(path, cell: str, max_atoms: int):
    """(structure, primitive cell, supercell numbers, force constants) of one DFT set — its
    `cell` as `ase.Atoms` with that cell's force constants (eV/Å²) — or None when the cell has
    more than `max_atoms` atoms. Module-level: it runs in `dataset_loader`'s processes."""
    ph = load_phonopy_dataset(path)
    atoms = phonopy_to_atoms(ph.supercell if cell == "supercell" else ph.unitcell)
    if len(atoms) > max_atoms:
        return None
    fc = np.asarray(ph.force_constants) if cell == "supercell" else unitcell_force_constants(ph)
    return atoms, phonopy_to_atoms(ph.primitive), np.asarray(ph.supercell.numbers), fc


def load_phonon_training_set(paths, cutoff: float, max_atoms: int, potential=None, geometry: str = "dft",
                             fraction: float = 1.0, cell: str = "supercell", n_buckets: int = 1,
                             min_bucket: int = 1, loader=None) -> tuple[list, list[PhononBucket]]:
    """DFT structures + full force constants, padded to `n_buckets` shapes. Returns
    (names, [PhononBucket]): buckets of ≥ `min_bucket` structures by edge count
    (`batch.size_buckets`), each padded to its largest structure.

    cell "supercell": the DFT supercells (≤ `max_atoms` atoms) and their force constants;
    "unitcell": the unit cells (≤ `max_atoms` atoms) and the force constants folded onto them
    (`phonons.fc2.unitcell_force_constants`: exact at the q points commensurate with the unit
    cell; a step on an 8-atom cell costs a fraction of one on its 64-atom supercell).
    geometry "dft": as given; "model_volume": each scaled isotropically by s**fraction, s the
    length scale of `potential`'s zero pressure (`relax.relax_volume` on the primitive cell;
    fractional coordinates and the force constants unchanged).
    loader: `phonons.data.dataset_loader()`, to read the data sets in several processes."""
    if geometry not in PHONON_GEOMETRIES:
        raise ValueError(f"phonon_geometry must be one of {PHONON_GEOMETRIES}, got {geometry!r}")
    if cell not in PHONON_CELLS:
        raise ValueError(f"phonon_cell must be one of {PHONON_CELLS}, got {cell!r}")
    paths = expand_datasets(paths)
    kept = []  # (path, read data set) of the sets small enough, each checked as it arrives
    for p, r in zip(paths, map_datasets(functools.partial(_read_training_set, cell=cell, max_atoms=max_atoms),
                                        paths, loader)):
        if r is not None:
            if potential is not None:
                check_species(potential, r[2], where=str(p))
            kept.append((p, r))
    names = [dataset_name(p) for p, _ in kept]
    scales = np.ones(len(kept))
    if geometry == "model_volume" and kept:
        t = time.time()
        _, zero_p, p_res = relax_volume(potential, [r[1] for _, r in kept])
        scales = zero_p ** fraction
        print(f"model_volume: {len(kept)} cells scaled by (zero-model-pressure scale)^{fraction:g}: lattice ×{scales.min():.3f}"
              f"–{scales.max():.3f} (median {np.median(scales):.4f}), max |p| {p_res.max():.1e} eV/Å³ "
              f"({time.time() - t:.0f} s)", flush=True)
    items, fcs = [], []
    for name, (_, (structure, _, _, fc)), scale in zip(names, kept, scales):
        atoms = scaled_cell(structure, scale)
        s = from_atoms(atoms)
        items.append((s, graph_of(s, cutoff, where=name), dict(forces=np.zeros((len(atoms), 3)))))
        fcs.append(fc)
    if not items:
        raise ValueError(f"no phonon training data with ≤ {max_atoms} {cell} atoms in {list(paths)}")
    labels = batching.size_buckets([int(np.sum(g.mask)) for _, g, _ in items], n_buckets, min_bucket)
    buckets = []
    for b in range(labels.max() + 1):
        index = np.flatnonzero(labels == b)
        structures = batching.pad_all([items[k] for k in index])
        n_pad = structures[0].system.positions.shape[0]
        fc = np.zeros((len(index), n_pad, n_pad, 3, 3))
        for j, k in enumerate(index):
            fc[j, : fcs[k].shape[0], : fcs[k].shape[1]] = fcs[k]
        buckets.append(PhononBucket(index, batching.stack(structures), fc))
    return names, buckets


def load_upstream_set(cfg: FinetuneConfig, base_potential, cutoff: float) -> tuple[Batch, Batch]:
    """(training, held-out) E/F/S frames: from upstream files (a seeded random `n_holdout` of
    the frames held out), or pseudo-labels of the frozen base model on perturbed crystals
    (`n_pseudo` training + `n_holdout` held-out crystals, distinct materials)."""
    rng = np.random.default_rng(cfg.seed)
    if cfg.upstream_files:
        frames = [a for p in cfg.upstream_files for a in efs_data.read_frames(p)]
        for k, a in enumerate(frames):
            check_species(base_potential, a.numbers, where=f"upstream frame {k}")
        if len(frames) <= cfg.n_holdout:
            raise ValueError(f"{cfg.upstream_files}: {len(frames)} frames, need more than n_holdout={cfg.n_holdout}")
        items = efs_data.frames_to_structures(frames, cutoff)
        order = rng.permutation(len(items))
        split = len(items) - cfg.n_holdout
        # each part padded to its own largest, as the pseudo-labels below
        return tuple(batching.stack(batching.pad_all([items[k] for k in part]))
                     for part in (order[:split], order[split:]))
    train, test = pseudo_label_pool(cfg, base_potential)
    if len(train) < cfg.n_pseudo or len(test) < cfg.n_holdout:
        raise ValueError(f"{cfg.pseudo_label_structures}: {len(train)}/{len(test)} usable train/test "
                         f"structures with ≤ {cfg.max_pseudo_atoms} atoms, need n_pseudo={cfg.n_pseudo} "
                         f"and n_holdout={cfg.n_holdout}")
    def labelled(records, r_rng):
        items = []
        for r in records:
            s = from_atoms(relax_data.perturb(r.atoms, cfg.rattle, cfg.strain, r_rng))
            items.append((s, graph_of(s, cutoff, where=r.material_id), {}))
        return efs_data.pseudo_label(base_potential, batching.stack(batching.pad_all(items)))

    # each padded to its own largest; the held-out frames draw from their own random stream,
    # so neither their shapes nor their rattles change with n_pseudo
    return (labelled([train[k] for k in rng.choice(len(train), cfg.n_pseudo, replace=False)], rng),
            labelled(test[:cfg.n_holdout], np.random.default_rng([cfg.seed, 1])))


def dft_relaxed_frames(records, cutoff: float) -> Batch | None:
    """Forgetting measured against DFT rather than against the base model: DFT-relaxed crystals
    (`relax.data.RelaxRecord`s; the report passes the held-out ones of `pseudo_label_pool`,
    materials never co-trained on) at their DFT geometry, labelled with their DFT total energy
    [eV] and zero forces and stress (a relaxed structure's), so `evaluation.efs_errors` gives a
    model's energy error vs DFT [eV/atom] and its residual |F| [eV/Å] and |σ| [eV/Å³] at the DFT
    minimum. Records without a DFT energy are left out; None if none has one (a phonondb folder)."""
    items = []
    for r in records:
        if np.isfinite(r.energy):
            s = from_atoms(r.atoms)
            items.append((s, graph_of(s, cutoff, where=r.material_id),
                          {"energy": r.energy, "forces": np.zeros((len(r.atoms), 3)), "stress": np.zeros(6)}))
    return batching.stack(batching.pad_all(items)) if items else None


def pseudo_label_pool(cfg: FinetuneConfig, potential) -> tuple[list, list]:
    """DFT-relaxed crystals of `pseudo_label_structures` with known elements, split by material
    (`relax_data.split_by_material`): (train records, held-out records)."""
    if not cfg.pseudo_label_structures:
        raise ValueError("co-training needs upstream_files or pseudo_label_structures")
    pool = relax_data.load_dft_relaxed(cfg.pseudo_label_structures, cfg.max_pseudo_atoms)
    known = set(potential.elements or [])
    pool = [r for r in pool if not known or set(r.atoms.numbers) <= known]
    split = relax_data.split_by_material([r.material_id for r in pool], (0.8, 0.0, 0.2), cfg.seed)
    train, test = set(split["train"]), set(split["test"])
    return [r for r in pool if r.material_id in train], [r for r in pool if r.material_id in test]


def make_step_fn(cfg: FinetuneConfig, phonon: list[PhononBucket], upstream: Batch, optimizer, mesh=None):
    """The composite (phonon + k upstream) step `(state, static, step, key) -> (state, metrics)`.
    Each phonon batch comes from one bucket (`training.batch_indices` with the bucket labels).
    mesh (`curvax.parallel.data_mesh`): global batches of batch size × devices, split over them."""
    w_ph = EFSWeights(*cfg.w_phonon_efs)
    w_up = EFSWeights(*cfg.w_upstream_efs)
    n_total = sum(len(b.index) for b in phonon)
    bucket_of, position = np.zeros(n_total, int), np.zeros(n_total, int)
    for k, b in enumerate(phonon):
        bucket_of[b.index], position[b.index] = k, np.arange(len(b.index))
    dtype = np.asarray(phonon[0].structures.system.positions).dtype
    fcs = [jnp.asarray(b.fc, dtype) for b in phonon]

    def phonon_loss(model, b, key):
        batch, fcb = b
        return batch_phonon_loss(model.rematerialised(cfg.remat_edges), batch, fcb, key, cfg.w_hessian, w_ph,
                                 cfg.hessian_sampling, cfg.loss, cfg.n_probes)

    def upstream_loss(model, batch, key):
        return batch_efs_loss(model, batch, w_up, cfg.loss)

    ph_update = training.make_update(phonon_loss, optimizer, cfg.ema_decay, mesh)
    up_update = training.make_update(upstream_loss, optimizer, cfg.ema_decay, mesh)
    n_up = upstream.energy.shape[0]
    n_dev = 1 if mesh is None else mesh.devices.size

    def step_fn(state, static, step, key):
        idx = training.batch_indices(n_total, cfg.phonon_batch_size * n_dev, step, cfg.seed, bucket_of)
        b, local = bucket_of[idx[0]], position[idx]
        state, m = ph_update(state, static, (batching.take(phonon[b].structures, local), fcs[b][local]), key)
        metrics = {f"phonon_{k}": v for k, v in m.items()}
        k_up = cfg.upstream_steps_per_phonon_step
        for j in range(k_up):
            sub = step * k_up + j
            uidx = training.batch_indices(n_up, cfg.upstream_batch_size * n_dev, sub, cfg.seed + 1)
            state, mu = up_update(state, static, batching.take(upstream, uidx), jax.random.fold_in(key, j + 1))
            for k, v in mu.items():
                metrics[f"upstream_{k}"] = metrics.get(f"upstream_{k}", 0.0) + v / k_up
        return state, metrics

    return step_fn


def _check_held_out(cfg: FinetuneConfig) -> tuple[list, list]:
    train, test = expand_datasets(cfg.phonon_train), expand_datasets(cfg.phonon_test)
    both = {p.resolve() for p in train} & {p.resolve() for p in test}
    if both:
        raise ValueError(f"phonon_test overlaps phonon_train: {sorted(map(str, both))}")
    return train, test


def data_split(cfg: FinetuneConfig, elements=None) -> dict:
    """{"train", "validation", "test"}: data set paths (`phonon_train`/`phonon_test` plus the
    `phonondb` split, `phonondb_split`)."""
    train, test = _check_held_out(cfg)
    split = {"train": list(train), "validation": [], "test": list(test)}
    if cfg.phonondb:
        db = phonondb_split(cfg.phonondb, cfg.phonondb_max_atoms, cfg.n_phonondb_test,
                            cfg.n_phonondb_validation, cfg.n_phonondb_train, elements,
                            cfg.phonondb_eval_max_displacements, cfg.phonondb_eval_max_atoms, cfg.phonon_cell)
        for k in split:
            split[k] += db[k]
    if cfg.cv_fold:
        i, k = cfg.cv_fold
        split["cv"] = material_folds(split["train"], k, cfg.phonondb)[i]
        held = set(split["cv"])
        split["train"] = [p for p in split["train"] if p not in held]
    return split


def material_folds(paths, k: int, phonondb=None) -> list[list[Path]]:
    """The data sets `paths` cut into `k` folds by material: phonondb archives by reduced
    formula (all polymorphs of a composition in one fold), other sets by name; materials in a
    fixed hash order (`relax_data._unit_hash`, independent of any training setting) dealt to the
    folds in turn (fold sizes differ by at most one composition). Order within a fold: that hash
    order. For leave-materials-out cross-validation (`finetune.crossval`)."""
    formula = {e.path: _reduced_formula(e.formula) for e in phonondb_entries(phonondb)} if phonondb else {}
    groups = {}
    for p in paths:
        groups.setdefault(formula.get(p, dataset_name(p)), []).append(p)
    order = sorted(groups, key=lambda m: (relax_data._unit_hash(0, m), m))
    return [[p for m in order[i::k] for p in groups[m]] for i in range(k)]


class PhononValidation:
    """Phonon properties of a model on validation materials (at the DFT geometry, or at the
    model's volume to the power `fraction`: `phonon_geometry`), scored against the base model:
    score = mean over ν_max, S, F, Cv of MAE(model)/MAE(base) (< 1: better)."""

    def __init__(self, paths, base, temperature: float, mesh, geometry: str = "dft", fraction: float = 1.0):
        self.temperature, self.mesh, self.geometry, self.fraction = temperature, tuple(mesh), geometry, fraction
        self.dft = [load_phonopy_dataset(p) for p in paths]
        self.ref = [phonon_properties(d, temperature, self.mesh) for d in self.dft]
        self.buckets = pft_eval.supercell_buckets(self.dft, base.cutoff) if paths else []
        self.base_mae = self.mae(base) if paths else None

    def mae(self, potential) -> dict:
        errs = {k: [] for k in COMPARED}
        scales = np.ones(len(self.dft))
        if self.geometry == "model_volume":  # pressure is intensive: solve on the primitive cells
            scales = relax_volume(potential, [phonopy_to_atoms(d.primitive) for d in self.dft])[1] ** self.fraction
        cells = [scaled_cell(phonopy_to_atoms(d.unitcell), s) for d, s in zip(self.dft, scales)]
        for dft, ref, bucket, cell in zip(self.dft, self.ref, self.buckets, cells):
            props = phonon_properties(pft_eval._model_phonopy(dft, cell, potential, bucket), self.temperature, self.mesh)
            diff = compare(props, ref)
            for k in COMPARED:
                errs[k].append(diff[k]["abs_error"])
        return {k: float(np.mean(v)) for k, v in errs.items()}

    def __call__(self, potential) -> dict:
        mae = self.mae(potential)
        ratios = [mae[k] / max(self.base_mae[k], 1e-12) for k in mae]
        return {**{f"val_{k}": v for k, v in mae.items()}, "val_score": float(np.mean(ratios))}


def run_record(cfg: FinetuneConfig) -> dict:
    """The settings a run's workdir records (config.yaml; a resumed run must match them)."""
    return {**dataclasses.asdict(cfg), "model_sha256": training.file_fingerprint(cfg.model)}


def run(cfg: FinetuneConfig, progress: bool = True, max_seconds: float | None = None, restart: bool = False):
    """Fine-tune; returns (base potential, fine-tuned EMA potential, held-out upstream Batch).
    Resumes from `workdir/checkpoint.eqx` if the settings are unchanged (`training.prepare_workdir`;
    `restart` starts afresh); writes `workdir/model.nqx` when all steps are done (the
    best-validation EMA weights with `select_best` and validation materials)."""
    with dataset_loader() as loader:  # reader processes, forked before JAX starts its threads
        workdir = training.prepare_workdir(cfg.workdir, run_record(cfg), cfg.steps, restart,
                                           defaults=field_defaults(FinetuneConfig))
        mesh = parallel.data_mesh(cfg.devices)
        n_dev = 1 if mesh is None else mesh.devices.size
        base = load_potential(cfg.model, precision.dtype_for(cfg.x64))
        split = data_split(cfg, base.elements)
        atomic_write(workdir / "split.json", json.dumps({k: [str(p) for p in v] for k, v in split.items()}, indent=1))
        cutoff = base.cutoff
        names, phonon = load_phonon_training_set(split["train"], cutoff, cfg.max_phonon_atoms, base,
                                                 cfg.phonon_geometry, cfg.model_volume_fraction, cfg.phonon_cell,
                                                 cfg.phonon_shape_buckets, cfg.phonon_batch_size * n_dev, loader)
    shapes = ", ".join(f"{len(b.index)} × {b.structures.system.positions.shape[1]} atoms / "
                       f"{b.structures.graph.mask.shape[1]} edges" for b in phonon)
    held = (f"; {len(split['cv'])} materials held out (cross-validation fold {cfg.cv_fold[0] + 1} of "
            f"{cfg.cv_fold[1]})" if cfg.cv_fold else "")
    print(f"phonon training set: {len(names)} {cfg.phonon_cell}s, padded to {shapes}; {len(split['validation'])} "
          f"validation and {len(split['test'])} test materials{held}", flush=True)
    upstream, holdout = load_upstream_set(cfg, base, cutoff)
    print(f"upstream set: {upstream.energy.shape[0]} training + {holdout.energy.shape[0]} held-out frames"
          f" ({'files' if cfg.upstream_files else 'pseudo-labels of the base model'})", flush=True)
    opt_cfg = training.OptimizerConfig(**{"total_steps": cfg.steps * (1 + cfg.upstream_steps_per_phonon_step),
                                          **cfg.optimizer})
    optimizer = training.make_optimizer(opt_cfg)
    state, static = training.init_state(base, optimizer)
    step_fn = make_step_fn(cfg, phonon, upstream, optimizer, mesh)
    if mesh is not None:
        print(f"data parallel over {mesh.devices.size} devices: global batches of {cfg.phonon_batch_size} × "
              f"{mesh.devices.size} phonon and {cfg.upstream_batch_size} × {mesh.devices.size} upstream structures",
              flush=True)
    t0 = time.time()
    validation = (PhononValidation(split["validation"], base, cfg.eval_temperature, cfg.eval_mesh,
                                   cfg.phonon_geometry, cfg.model_volume_fraction)
                  if split["validation"] else None)
    if validation is not None:
        print(f"validation: {len(split['validation'])} materials, base model MAE "
              + ", ".join(f"{k} {v:.3g}" for k, v in validation.base_mae.items())
              + f" ({time.time() - t0:.0f} s)", flush=True)
    best_path = workdir / "best.eqx"

    def validate(state):
        model = training.combine(state.ema, static)
        errors = pft_eval.efs_errors({"ema": model}, holdout)["ema"]
        out = {f"holdout_{k}": v for k, v in errors.items()}
        if validation is not None:
            out.update(validation(model))
            best = json.loads(best_path.open("rb").readline()) if best_path.is_file() else {}
            # must beat the base (score 1) and the best so far, within the forgetting budget
            if out["val_score"] < best.get("val_score", 1.0) and out["holdout_forces"] <= cfg.max_force_drift:
                training.save_checkpoint(best_path, state, {"val_score": out["val_score"],
                                                            "step": int(state.step)})
        return out

    state = training.fit(state, static, step_fn, cfg.steps, workdir, cfg.checkpoint_every,
                         eval_fn=validate, eval_every=cfg.eval_every, seed=cfg.seed, progress=progress,
                         max_seconds=max_seconds)
    if training.checkpoint_step(workdir / "checkpoint.eqx") < cfg.steps:
        return base, training.combine(state.ema, static), holdout
    if validation is not None and cfg.select_best:
        if best_path.is_file():
            best, meta = training.load_checkpoint(best_path, state)
            print(f"early stopping: best validation score {meta['val_score']:.3f} (base = 1) after "
                  f"{meta['step']} optimiser updates", flush=True)
            state = best
        else:
            print("no step beat the base model on the validation materials: writing the base model", flush=True)
            state = state._replace(ema=training.init_state(base, optimizer)[0].ema)
    tuned = training.combine(state.ema, static)
    save_potential(tuned, workdir / "model")
    return base, tuned, holdout


def evaluate(cfg: FinetuneConfig, base, tuned, holdout: Batch, progress=print) -> str:
    """Before/after report on held-out data (see `pft_eval`); writes workdir/report.{txt,json,png}.
    A cross-validation of the same recipe in workdir/cv (`finetune.crossval`) is appended.

    Rows: the base model, the fine-tuned model and every `compare_models` entry (e.g. the
    authors' own PFT model), on `phonon_test` (both protocols), the held-out upstream frames
    and `n_relax_eval` relaxations of perturbed held-out crystals, and the held-out crystals at
    their DFT geometry against their DFT labels (`dft_relaxed_frames`)."""
    test = data_split(cfg, base.elements)["test"]
    models = {"base": base, "fine-tuned": tuned}
    for m in cfg.compare_models:
        models[Path(m).stem if m.endswith(".nqx") else m] = load_potential(m, precision.dtype_for(cfg.x64))
    rows = pft_eval.phonon_rows(models, test, cfg.eval_temperature, tuple(cfg.eval_mesh),
                                tuple(cfg.eval_protocols), progress=progress,
                                relax_max_atoms=cfg.eval_relax_max_atoms)
    summary = pft_eval.phonon_summary(rows)
    efs = pft_eval.efs_errors(models, holdout)
    dft = relax = dft_frames = None
    if cfg.pseudo_label_structures:
        held_out = pseudo_label_pool(cfg, base)[1]
        dft_frames = dft_relaxed_frames(held_out, base.cutoff)
        dft = None if dft_frames is None else pft_eval.efs_errors(models, dft_frames)
        if cfg.n_relax_eval:
            pairs = relax_data.make_pairs(held_out[-cfg.n_relax_eval:], seed=cfg.seed)
            relax = pft_eval.relaxation_errors(models, pairs)
    report = pft_eval.format_report(summary, efs, relax, cfg.eval_temperature, dft_relaxed=dft,
                                    n_dft_relaxed=0 if dft_frames is None else len(dft_frames.n_atoms))
    groups = {"phonondb test materials": [r for r in rows if r["material"].startswith("mp-")],
              "the phonon_test sets": [r for r in rows if not r["material"].startswith("mp-")]}
    for title, sub in groups.items():
        if sub and len(sub) < len(rows):
            report += "\n\n" + pft_eval.format_report(pft_eval.phonon_summary(sub), temperature=cfg.eval_temperature,
                                                     title=title)
    report += "\n\n" + pft_eval.per_material_changes(rows)
    from curvax.finetune import crossval  # (it builds on this module)

    cv = crossval.stored_report(cfg)  # `curvax finetune CONFIG --cv K` run before in this workdir
    if cv:
        report += "\n\n" + cv
    workdir = Path(cfg.workdir)
    atomic_write(workdir / "report.txt", report + "\n")
    blob = {"phonons": rows, "summary": {f"{p}/{m}": d for (p, m), d in summary.items()},
            "upstream_holdout": efs, "dft_relaxed_holdout": dft, "relaxation": relax}
    atomic_write(workdir / "report.json", json.dumps(blob, indent=1))
    pft_eval.plot_report(rows, workdir / "report.png")
    return report
