"""Leave-materials-out cross-validation of a PFT recipe: `curvax finetune CONFIG --cv K`.

The recipe's training materials (`pft.data_split(cfg)["train"]`) are cut into K folds by
material (`pft.material_folds`: phonondb by reduced formula, so polymorphs stay together). For
each fold i the recipe is trained from the base model on the other K − 1 folds with every
setting of CONFIG (`pft.run` with `cv_fold: [i, K]`, in workdir/cv/fold-<i+1>-of-<K>, resumable),
and the base and the fold's fine-tuned model are compared with DFT (`evaluation.phonon_rows`,
CONFIG's temperature, mesh and protocols) on the first `materials_per_fold` materials of the
held-out fold whose DFT supercells have ≤ `phonondb_eval_max_atoms` atoms (evaluation cost).

The estimate printed is the change of each property's MAE vs the base, pooled over every
fold's evaluated materials (each material is scored by a model that never saw it), beside the
change per fold and per material. Outputs: workdir/cv/cv.txt and cv.json; a trained fold's
model and its scored rows are kept (fold-*/model.nqx, rows.json), so a killed cross-validation
resumes at the fold it was in, and a later run asking for more materials per fold scores only
the new ones (with the stored models, after checking the fold was trained with these settings).
The main job's report (`pft.evaluate`) appends workdir/cv/cv.txt when it was made with the same
recipe.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from curvax import precision
from curvax.config import field_defaults
from curvax.finetune import evaluation as pft_eval
from curvax.finetune import pft, training
from curvax.io import atomic_write
from curvax.phonons.data import dataset_name, load_phonopy_dataset, phonondb_entries
from curvax.phonons.properties import COMPARED
from curvax.potentials import load_potential

_NOT_RECIPE = ("workdir", "cv_fold")  # settings that may differ between a CV and the main job


def recipe(cfg: pft.FinetuneConfig) -> dict:
    """The settings a cross-validation estimates (the config without where it runs)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_RECIPE}


def evaluation_materials(paths, max_atoms: int, n: int, phonondb=None) -> list[Path]:
    """The first `n` of `paths` (a fold, in its order) whose DFT supercell has ≤ `max_atoms` atoms."""
    sizes = {e.path: e.n_supercell for e in phonondb_entries(phonondb)} if phonondb else {}
    out = []
    for p in paths:
        if len(out) == n:
            break
        size = sizes.get(p)
        if size is None:
            size = len(load_phonopy_dataset(p).supercell)
        if size <= max_atoms:
            out.append(p)
    return out


def run(cfg: pft.FinetuneConfig, k: int, materials_per_fold: int = 16, progress: bool = True,
        max_seconds: float | None = None) -> str | None:
    """K-fold cross-validation of the recipe `cfg` (module doc). Returns the text of cv.txt, or
    None when `max_seconds` stopped a fold's training (rerun to resume)."""
    if k < 2 or materials_per_fold < 1:
        raise ValueError(f"cross-validation needs k ≥ 2 folds and ≥ 1 material per fold (got {k}, {materials_per_fold})")
    root = Path(cfg.workdir) / "cv"
    max_atoms = cfg.phonondb_eval_max_atoms or cfg.phonondb_max_atoms
    rows, t0 = [], time.time()
    dtype = precision.dtype_for(cfg.x64)
    for i in range(k):
        fold_dir = root / f"fold-{i + 1}-of-{k}"
        fold_cfg = dataclasses.replace(cfg, workdir=str(fold_dir), cv_fold=[i, k])
        models = None
        if (fold_dir / "model.nqx").is_file() and training.checkpoint_step(fold_dir / "checkpoint.eqx") == cfg.steps:
            # trained: only its settings are checked
            training.check_same_run(fold_dir, pft.run_record(fold_cfg), defaults=field_defaults(pft.FinetuneConfig),
                                    fix=f"Delete {root} to start the cross-validation afresh")
        else:  # trains, or trains on (more steps): rows scored before are of another model
            left = None if max_seconds is None else max(max_seconds - (time.time() - t0), 0.0)
            base, tuned, _ = pft.run(fold_cfg, progress=progress, max_seconds=left)
            if training.checkpoint_step(fold_dir / "checkpoint.eqx") < cfg.steps:
                return None  # stopped by max_seconds
            models = {"base": base, "fine-tuned": tuned}
        held = json.loads((fold_dir / "split.json").read_text())["cv"]
        paths = evaluation_materials([Path(p) for p in held], max_atoms, materials_per_fold, cfg.phonondb)
        done = fold_dir / "rows.json"
        scored = json.loads(done.read_text()) if done.is_file() and models is None else []
        todo = [p for p in paths if dataset_name(p) not in {r["material"] for r in scored}]
        if todo:
            print(f"fold {i + 1}/{k}: {len(held)} materials held out, scoring {len(todo)} of {len(paths)} "
                  f"(DFT supercells ≤ {max_atoms} atoms)", flush=True)
            models = models or {"base": load_potential(cfg.model, dtype),
                                "fine-tuned": load_potential(fold_dir / "model.nqx", dtype)}
            scored += pft_eval.phonon_rows(models, todo, cfg.eval_temperature, tuple(cfg.eval_mesh),
                                           tuple(cfg.eval_protocols), relax_max_atoms=cfg.eval_relax_max_atoms)
            atomic_write(done, json.dumps(scored, indent=1))
        names = {dataset_name(p) for p in paths}
        rows += [dict(r, fold=i + 1) for r in scored if r["material"] in names]
        elapsed = time.time() - t0
        print(f"cross-validation: fold {i + 1}/{k} done ({elapsed / 60:.1f} min"
              + (f", ETA {elapsed / (i + 1) * (k - i - 1) / 60:.0f} min)" if i + 1 < k else ")"), flush=True)
    text = report(rows, k, materials_per_fold, max_atoms, cfg.eval_temperature)
    atomic_write(root / "cv.txt", text + "\n")
    atomic_write(root / "cv.json", json.dumps({"recipe": recipe(cfg), "folds": k, "rows": rows}, indent=1, default=str))
    return text


def report(rows: list[dict], k: int, materials_per_fold: int, max_atoms: int, temperature: float) -> str:
    """Pooled table (`evaluation.format_report`), % change per fold and per material."""
    title = (f"the held-out folds of a {k}-fold cross-validation by material (≤ {materials_per_fold} "
             f"materials per fold, DFT supercells ≤ {max_atoms} atoms), pooled")
    lines = [pft_eval.format_report(pft_eval.phonon_summary(rows), temperature=temperature, title=title), "",
             "Per fold: MAE change of the fold's fine-tuned model vs base",
             f"{'fold':<6}{'protocol':<11}{'n':>3}" + "".join(f"{p:>16}" for p in COMPARED)]
    for fold in range(1, k + 1):
        summary = pft_eval.phonon_summary([r for r in rows if r["fold"] == fold])
        for (protocol, model), d in summary.items():
            base = summary.get((protocol, "base"))
            if model == "base" or base is None:
                continue
            change = pft_eval.percent_change(d, base)
            lines.append(f"{fold:<6}{protocol:<11}{d['n']:>3}" + "".join(f"{change[p]:>+15.1f}%" for p in COMPARED))
    return "\n".join(lines + ["", pft_eval.per_material_changes(rows)])


def stored_report(cfg: pft.FinetuneConfig) -> str | None:
    """workdir/cv/cv.txt if it was made with the recipe `cfg`, else None."""
    root = Path(cfg.workdir) / "cv"
    try:
        stored = json.loads((root / "cv.json").read_text())
    except (OSError, ValueError):
        return None
    same = stored.get("recipe") == json.loads(json.dumps(recipe(cfg), default=str))
    return (root / "cv.txt").read_text().rstrip() if same and (root / "cv.txt").is_file() else None
