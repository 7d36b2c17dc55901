"""Phonon fine-tuning (PFT) of a pretrained potential on DFT force constants, with co-training.

One training step (`step` counts these) =
    1 phonon update   on a batch of DFT supercells:  w_H·L_H (one HVP per structure, see
                      `pft_loss`) + forces (DFT equilibrium: F* = 0) [+ stress where known]
    k upstream updates on E/F/S frames (real upstream files, or pseudo-labels of the frozen
                      base model on rattled/strained crystals when no upstream data is given)
Batches and random probes are pure functions of the step number, so a run killed at any
point resumes from its last atomic checkpoint and reproduces the uninterrupted run.

Config: a YAML file (see `configs/pft-nequix-mp.yaml`); `FinetuneConfig` documents every key.
Outputs in `workdir`: checkpoint.eqx, metrics.csv, eval.csv, config.yaml, model.nqx
(EMA weights; loads with `curvax.load_nequix` and `nequix.model.load_model`).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from curvax import batch as batching
from curvax import efs_data, pft_eval, relax_data, training
from curvax.batch import Batch, graph_of
from curvax.pft_loss import EFSWeights, batch_efs_loss, batch_phonon_loss
from curvax.potentials.base import check_species
from curvax.system import from_atoms


@dataclasses.dataclass
class FinetuneConfig:
    model: str  # .nqx path or registered name
    workdir: str = "runs/pft"  # relative to the current directory
    phonon_train: list = dataclasses.field(default_factory=list)  # data sets / folders (phonon_data)
    phonon_test: list = dataclasses.field(default_factory=list)  # held-out data sets for evaluation
    max_phonon_atoms: int = 64  # skip training supercells larger than this
    upstream_files: list = dataclasses.field(default_factory=list)  # extxyz / .db / vasprun.xml
    pseudo_label_structures: str | None = None  # pymatgen JSON(.gz) list, used if no upstream files
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
    n_holdout: int = 8  # upstream frames held out of training, for the forgetting check
    n_relax_eval: int = 4  # perturbed DFT-relaxed crystals relaxed by each model (0: skip)
    eval_temperature: float = 300.0  # K
    eval_mesh: tuple = (10, 10, 10)
    eval_protocols: tuple = ("unrelaxed", "relaxed")
    compare_models: list = dataclasses.field(default_factory=list)  # extra models for the table

    @staticmethod
    def from_yaml(path) -> "FinetuneConfig":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        raw = yaml.safe_load(path.read_text()) or {}
        known = {f.name for f in dataclasses.fields(FinetuneConfig)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{path}: unknown config keys {unknown}; known: {sorted(known)}")
        if "model" not in raw:
            raise ValueError(f"{path}: 'model' is required")
        opt_keys = {f.name for f in dataclasses.fields(training.OptimizerConfig)} - {"total_steps"}
        bad = sorted(set(raw.get("optimizer") or {}) - opt_keys)
        if bad:
            raise ValueError(f"{path}: unknown optimizer keys {bad}; known: {sorted(opt_keys)}")
        base = path.parent
        for key in ("phonon_train", "phonon_test", "upstream_files", "compare_models"):
            raw[key] = [_rel(base, p) for p in raw.get(key, [])]
        for key in ("model", "pseudo_label_structures"):
            if raw.get(key):
                raw[key] = _rel(base, raw[key])
        return FinetuneConfig(**raw)


def _rel(base: Path, p: str) -> str:
    """Paths in a config are relative to the config file (names without '/' stay names)."""
    q = Path(p).expanduser()
    if q.is_absolute() or ("/" not in p and not p.endswith(".nqx")):
        return p
    return str((base / q).resolve())


def expand_datasets(paths) -> list[Path]:
    """Data set paths; a folder without phonopy files expands to every data set below it."""
    from curvax.phonon_data import list_datasets

    out = []
    for p in map(Path, paths):
        if p.is_dir() and not (p / "phonopy_disp.yaml").is_file():
            out.extend(list_datasets(p))
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"phonon data set not found: {p}")
    return out


def load_phonon_training_set(paths, cutoff: float, max_atoms: int, potential=None):
    """DFT supercells + full force constants, padded to one shape. Returns (names, Batch, fc)."""
    from curvax.phonon_data import dataset_name, load_phonopy_dataset

    items, fcs, names = [], [], []
    for p in expand_datasets(paths):
        ph = load_phonopy_dataset(p)
        n = len(ph.supercell)
        if n > max_atoms:
            continue
        sc = ph.supercell
        from ase import Atoms

        atoms = Atoms(numbers=sc.numbers, positions=sc.positions, cell=sc.cell, pbc=True)
        if potential is not None:
            check_species(potential, atoms.numbers, where=str(p))
        s = from_atoms(atoms)
        items.append((s, graph_of(s, cutoff, where=str(p)), dict(forces=np.zeros((n, 3)))))
        fcs.append(np.asarray(ph.force_constants))
        names.append(dataset_name(p))
    if not items:
        raise ValueError(f"no phonon training data with ≤ {max_atoms} supercell atoms in {list(paths)}")
    structures = efs_data.pad_all(items)
    n_pad = structures[0].system.positions.shape[0]
    fc = np.zeros((len(fcs), n_pad, n_pad, 3, 3))
    for k, f in enumerate(fcs):
        fc[k, : f.shape[0], : f.shape[1]] = f
    return names, batching.stack(structures), fc


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
        structures = efs_data.pad_all(efs_data.frames_to_structures(frames, cutoff))
        order = rng.permutation(len(structures))
        split = len(structures) - cfg.n_holdout
        return (batching.stack([structures[k] for k in order[:split]]),
                batching.stack([structures[k] for k in order[split:]]))
    train, test = pseudo_label_pool(cfg, base_potential)
    if len(train) < cfg.n_pseudo or len(test) < cfg.n_holdout:
        raise ValueError(f"{cfg.pseudo_label_structures}: {len(train)}/{len(test)} usable train/test "
                         f"structures with ≤ {cfg.max_pseudo_atoms} atoms, need n_pseudo={cfg.n_pseudo} "
                         f"and n_holdout={cfg.n_holdout}")
    items = []
    for r in [train[k] for k in rng.choice(len(train), cfg.n_pseudo, replace=False)] + test[:cfg.n_holdout]:
        s = from_atoms(relax_data.perturb(r.atoms, cfg.rattle, cfg.strain, rng))
        items.append((s, graph_of(s, cutoff, where=r.material_id), {}))
    labelled = efs_data.pseudo_label(base_potential, batching.stack(efs_data.pad_all(items)))
    n = cfg.n_pseudo + cfg.n_holdout
    return (batching.take(labelled, np.arange(cfg.n_pseudo)),
            batching.take(labelled, np.arange(cfg.n_pseudo, n)))


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


def make_step_fn(cfg: FinetuneConfig, phonon: Batch, fc, upstream: Batch, optimizer):
    """The composite (phonon + k upstream) step `(state, static, step, key) -> (state, metrics)`."""
    w_ph = EFSWeights(*cfg.w_phonon_efs)
    w_up = EFSWeights(*cfg.w_upstream_efs)

    def phonon_loss(model, b, key):
        batch, fcb = b
        return batch_phonon_loss(model, batch, fcb, key, cfg.w_hessian, w_ph, cfg.hessian_sampling, cfg.loss)

    def upstream_loss(model, batch, key):
        return batch_efs_loss(model, batch, w_up, cfg.loss)

    ph_update = training.make_update(phonon_loss, optimizer, cfg.ema_decay)
    up_update = training.make_update(upstream_loss, optimizer, cfg.ema_decay)
    fc = jnp.asarray(fc)
    n_up = upstream.energy.shape[0]

    def step_fn(state, static, step, key):
        idx = training.batch_indices(fc.shape[0], cfg.phonon_batch_size, step, cfg.seed)
        state, m = ph_update(state, static, (batching.take(phonon, idx), fc[idx]), key)
        metrics = {f"phonon_{k}": v for k, v in m.items()}
        k_up = cfg.upstream_steps_per_phonon_step
        for j in range(k_up):
            sub = step * k_up + j
            uidx = training.batch_indices(n_up, cfg.upstream_batch_size, sub, cfg.seed + 1)
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


def run(cfg: FinetuneConfig, progress: bool = True, max_seconds: float | None = None):
    """Fine-tune; returns (base potential, fine-tuned EMA potential, held-out upstream Batch).
    Resumes from `workdir/checkpoint.eqx`; writes `workdir/model.nqx` when all steps are done."""
    from curvax.phonons import load_potential

    if cfg.x64:
        jax.config.update("jax_enable_x64", True)
    _check_held_out(cfg)
    workdir = Path(cfg.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    base = load_potential(cfg.model, cfg.x64)
    cutoff = base.cutoff
    names, phonon, fc = load_phonon_training_set(cfg.phonon_train, cutoff, cfg.max_phonon_atoms, base)
    print(f"phonon training set: {len(names)} supercells ({', '.join(names)}), padded to "
          f"{phonon.system.positions.shape[1]} atoms / {phonon.graph.mask.shape[1]} edges", flush=True)
    upstream, holdout = load_upstream_set(cfg, base, cutoff)
    print(f"upstream set: {upstream.energy.shape[0]} training + {holdout.energy.shape[0]} held-out frames"
          f" ({'files' if cfg.upstream_files else 'pseudo-labels of the base model'})", flush=True)
    opt_cfg = training.OptimizerConfig(**{"total_steps": cfg.steps * (1 + cfg.upstream_steps_per_phonon_step),
                                          **cfg.optimizer})
    optimizer = training.make_optimizer(opt_cfg)
    state, static = training.init_state(base, optimizer)
    step_fn = make_step_fn(cfg, phonon, fc.astype(np.asarray(phonon.system.positions).dtype), upstream, optimizer)

    def validate(state):
        errors = pft_eval.efs_errors({"ema": training.combine(state.ema, static)}, holdout)["ema"]
        return {f"holdout_{k}": v for k, v in errors.items()}

    state = training.fit(state, static, step_fn, cfg.steps, workdir, cfg.checkpoint_every,
                         eval_fn=validate, eval_every=cfg.eval_every, seed=cfg.seed, progress=progress,
                         max_seconds=max_seconds)
    tuned = training.combine(state.ema, static)
    if training.checkpoint_step(workdir / "checkpoint.eqx") >= cfg.steps:
        tuned.save(workdir / "model.nqx")
    return base, tuned, holdout


def evaluate(cfg: FinetuneConfig, base, tuned, holdout: Batch, progress=print) -> str:
    """Before/after report on held-out data (see `pft_eval`); writes workdir/report.{txt,json,png}.

    Rows: the base model, the fine-tuned model and every `compare_models` entry (e.g. the
    authors' own PFT model), on `phonon_test` (both protocols), the held-out upstream frames
    and `n_relax_eval` relaxations of perturbed held-out crystals."""
    import json

    from curvax.phonons import load_potential

    _, test = _check_held_out(cfg)
    models = {"base": base, "fine-tuned": tuned}
    for m in cfg.compare_models:
        models[Path(m).stem if m.endswith(".nqx") else m] = load_potential(m, cfg.x64)
    rows = pft_eval.phonon_rows(models, test, cfg.eval_temperature, tuple(cfg.eval_mesh),
                                tuple(cfg.eval_protocols), progress=progress)
    summary = pft_eval.phonon_summary(rows)
    efs = pft_eval.efs_errors(models, holdout)
    relax = None
    if cfg.n_relax_eval and cfg.pseudo_label_structures:
        records = pseudo_label_pool(cfg, base)[1][-cfg.n_relax_eval:]
        relax = pft_eval.relaxation_errors(models, relax_data.make_pairs(records, seed=cfg.seed))
    report = pft_eval.format_report(summary, efs, relax, cfg.eval_temperature)
    workdir = Path(cfg.workdir)
    (workdir / "report.txt").write_text(report + "\n")
    blob = {"phonons": rows, "summary": {f"{p}/{m}": d for (p, m), d in summary.items()},
            "upstream_holdout": efs, "relaxation": relax}
    (workdir / "report.json").write_text(json.dumps(blob, indent=1))
    pft_eval.plot_report(rows, workdir / "report.png")
    return report
