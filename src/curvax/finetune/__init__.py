"""Fine-tuning a pretrained potential on derivatives: phonon fine-tuning (PFT) on DFT force
constants, and relaxation fine-tuning through the unrolled relaxation.

Modules: `training` (optax, EMA, atomic checkpoints, resumable `fit`), `losses` (sampled Hessian
columns by one HVP, energy/force/stress), `efs_data` (upstream E/F/σ frames, base-model
pseudo-labels), `pft` (the PFT recipe: `FinetuneConfig`, data split by formula, `run`,
`evaluate`), `evaluation` (phonon benchmark rows, forgetting checks, report), `relax_tune` (the
relaxation recipe: `RelaxTuneConfig`, `run`). Configs load with `curvax.config.load_config`.
"""
from curvax.finetune.pft import FinetuneConfig
from curvax.finetune.relax_tune import RelaxTuneConfig

__all__ = ["FinetuneConfig", "RelaxTuneConfig"]
