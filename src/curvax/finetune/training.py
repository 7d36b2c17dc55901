"""Training machinery shared by phonon fine-tuning and relaxation fine-tuning.

    optimizer = make_optimizer(OptimizerConfig(...))            # optax chain
    state, static = init_state(model, optimizer)                # trainable leaves + the rest
    update = make_update(loss_fn, optimizer, ema_decay)         # pure, jit-able
    state, metrics = update(state, static, batch, key)
    model = combine(state.params, static); ema_model = combine(state.ema, static)

`loss_fn(model, batch, key) -> (loss, metrics_dict)`. Batches and random keys must be pure
functions of the step number (`fold_in(seed, step)`), so that `fit` resumed from a
checkpoint reproduces the uninterrupted run exactly. Checkpoints are written atomically
(`curvax.io.atomic_write`): a kill at any moment leaves the last good one.
EMA: θ_ema ← d·θ_ema + (1 − d)·θ (Polyak averaging).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import yaml

from curvax import parallel
from curvax.io import atomic_write


@dataclasses.dataclass
class OptimizerConfig:
    name: str = "adamw"  # "adam" | "adamw" | "sgd"
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0  # global-norm clipping
    schedule: str = "constant"  # "constant" | "cosine"
    warmup_steps: int = 0
    total_steps: int = 1000


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    """optax chain: [clip by global norm] → Adam/AdamW/SGD with an optional warm-up + cosine schedule."""
    if cfg.schedule == "cosine":
        lr = optax.warmup_cosine_decay_schedule(0.0 if cfg.warmup_steps else cfg.learning_rate,
                                                cfg.learning_rate, max(cfg.warmup_steps, 1),
                                                max(cfg.total_steps, cfg.warmup_steps + 1))
    elif cfg.schedule == "constant":
        lr = (optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
              if cfg.warmup_steps else cfg.learning_rate)
    else:
        raise ValueError(f"unknown schedule {cfg.schedule!r} (constant | cosine)")
    opts = {"adam": lambda: optax.adam(lr),
            "adamw": lambda: optax.adamw(lr, weight_decay=cfg.weight_decay),
            "sgd": lambda: optax.sgd(lr)}
    if cfg.name not in opts:
        raise ValueError(f"unknown optimizer {cfg.name!r} ({' | '.join(opts)})")
    chain = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip else []
    return optax.chain(*chain, opts[cfg.name]())


class TrainState(NamedTuple):
    step: jnp.ndarray
    params: Any  # trainable (floating-point array) leaves of the model
    opt_state: Any
    ema: Any  # exponential moving average of params


def init_state(model, optimizer) -> tuple[TrainState, Any]:
    """Split `model` into trainable params and static rest; returns (state, static)."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), params), static


def combine(params, static):
    return eqx.combine(params, static)


MAX_NONFINITE_STEPS = 3  # consecutive skipped (non-finite) steps after which `fit` stops


def make_update(loss_fn: Callable, optimizer, ema_decay: float = 0.99, mesh=None) -> Callable:
    """Pure update step `(state, static, batch, key) -> (state, metrics)` (jit-compiled). A step
    whose loss or gradient is not finite changes nothing but the step counter and reports
    metrics["nonfinite"] = 1 (`fit` stops after `MAX_NONFINITE_STEPS` of them in a row).
    mesh (`curvax.parallel.data_mesh`): the batch is split over its devices along the leading
    axis and the state replicated; the step is the single-device step on the same global batch."""

    @eqx.filter_jit
    def update(state: TrainState, static, batch, key):
        def f(params):
            return loss_fn(combine(params, static), batch, key)

        (loss, metrics), grads = jax.value_and_grad(f, has_aux=True)(state.params)
        grad_norm = optax.global_norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state.ema, params)
        # a non-finite loss or gradient leaves the model, optimiser and EMA as they were
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), (params, opt_state, ema),
                           (state.params, state.opt_state, state.ema))
        metrics = dict(metrics, loss=loss, grad_norm=grad_norm, nonfinite=(~finite).astype(loss.dtype))
        return TrainState(state.step + 1, *new), metrics

    if mesh is None:
        return update

    def data_parallel_update(state: TrainState, static, batch, key):
        return update(parallel.replicate(state, mesh), static, parallel.shard_batch(batch, mesh), key)

    return data_parallel_update


def batch_indices(n_items: int, batch_size: int, step: int, seed: int, groups=None) -> np.ndarray:
    """Indices of the batch used at `step`: epoch-wise permutations, a pure function of
    (step, seed), so a resumed run sees the same batches as an uninterrupted one.

    groups: a label per item (e.g. `batch.size_buckets`): every batch then comes from one group —
    the epoch's permutation is cut per group into batches (a group's remainder is dropped) taken
    in the order of their first member in the permutation, so each item is drawn as often as
    without groups, and a single group gives the ungrouped batches."""
    batch_size = min(batch_size, n_items)
    labels = np.zeros(n_items, int) if groups is None else np.asarray(groups)
    per_epoch = max(sum(int(np.sum(labels == g)) // batch_size for g in np.unique(labels)), 1)
    epoch, pos = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n_items)
    rank = np.empty(n_items, int)
    rank[perm] = np.arange(n_items)
    batches = []
    for g in np.unique(labels):
        members = perm[labels[perm] == g]
        batches += [members[k:k + batch_size] for k in range(0, len(members) - batch_size + 1, batch_size)]
    if not batches:
        raise ValueError(f"no group holds a batch of {batch_size} items")
    batches.sort(key=lambda b: rank[b[0]])
    return batches[pos]


def save_checkpoint(path, state: TrainState, meta: dict | None = None) -> None:
    """Atomically write `state` (+ JSON metadata on the first line) to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write((json.dumps(meta or {}) + "\n").encode())
            eqx.tree_serialise_leaves(f, state)

    atomic_write(path, write)


def load_checkpoint(path, like: TrainState) -> tuple[TrainState, dict]:
    """Read a checkpoint written by `save_checkpoint`; `like` gives the tree structure."""
    with open(path, "rb") as f:
        try:
            meta = json.loads(f.readline().decode())
            state = eqx.tree_deserialise_leaves(f, like)
        except Exception as e:
            raise ValueError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e}); "
                             f"delete it to start afresh") from e
    return state, meta


def checkpoint_step(path) -> int:
    """Number of `fit` steps recorded in a checkpoint (0 if there is none)."""
    path = Path(path)
    if not path.is_file():
        return 0
    with open(path, "rb") as f:
        return int(json.loads(f.readline().decode()).get("step", 0))


class MetricsLog:
    """Append-only CSV of per-step metrics; on resume, rows after the checkpoint are dropped."""

    def __init__(self, path, resume_step: int = 0):
        self.path = Path(path)
        self.fields = None
        rows = []
        if self.path.exists() and resume_step > 0:
            with open(self.path) as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        if rows:
            self.fields = list(rows[0].keys())
            self._rewrite(rows)
        elif self.path.exists() and parallel.is_writer():
            self.path.unlink()

    def _rewrite(self, rows):
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=self.fields)
        w.writeheader()
        w.writerows(rows)
        atomic_write(self.path, buf.getvalue())

    def write(self, row: dict) -> None:
        row = {k: (float(v) if hasattr(v, "__float__") and not isinstance(v, (int, str)) else v)
               for k, v in row.items()}
        if self.fields is None:
            self.fields = list(row.keys())
            self._rewrite([])
        if not parallel.is_writer():
            return
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore").writerow(row)


def read_metrics(path) -> list[dict]:
    with open(path) as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


def fit(state: TrainState, static, step_fn: Callable, n_steps: int, workdir,
        checkpoint_every: int = 10, eval_fn: Callable | None = None, eval_every: int = 0,
        seed: int = 0, progress: bool = True, max_seconds: float | None = None, desc: str = "fine-tune"):
    """Run `step_fn(state, static, step, key) -> (state, metrics)` until `n_steps`, resuming.

    workdir/checkpoint.eqx   last checkpoint (atomic), resumed from if present
    workdir/metrics.csv      one row per step
    workdir/eval.csv         one row per evaluation, `eval_fn(state) -> dict`, every `eval_every` steps
    Returns the final state. `max_seconds` stops early (after a checkpoint) for time-boxed runs.
    The metrics' `time_s` is the run's wall time summed over resumes (stored in the checkpoint).
    """
    from tqdm.auto import tqdm

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt = workdir / "checkpoint.eqx"
    start, t_before = 0, 0.0  # fit steps done; may differ from state.step (optimizer updates) when a
    if ckpt.exists():  # step makes several updates, as PFT's phonon + k upstream updates
        state, meta = load_checkpoint(ckpt, state)
        start, t_before = int(meta.get("step", state.step)), float(meta.get("time_s", 0.0))
    log = MetricsLog(workdir / "metrics.csv", resume_step=start)
    eval_log = MetricsLog(workdir / "eval.csv", resume_step=start)
    base_key = jax.random.PRNGKey(seed)
    t0 = time.time()
    bar = tqdm(total=n_steps, initial=start, disable=not progress, desc=desc, unit="step")
    bad = []  # consecutive steps with a non-finite loss or gradient
    for step in range(start, n_steps):
        state, metrics = step_fn(state, static, step, jax.random.fold_in(base_key, step))
        row = {"step": step + 1, "time_s": round(t_before + time.time() - t0, 3)}
        row.update({k: float(v) for k, v in metrics.items()})
        log.write(row)
        bad = bad + [step + 1] if any(v > 0 for k, v in row.items() if k.endswith("nonfinite")) else []
        if len(bad) >= MAX_NONFINITE_STEPS:
            bar.close()
            raise FloatingPointError(
                f"{workdir}: non-finite loss or gradient at steps {bad} (see metrics.csv; the model was not "
                f"updated by them): lower the learning rate, or use a gradient mode that suits the data "
                f"(an implicit gradient needs relaxations that end at a minimum)")
        bar.update(1)
        bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k.endswith("loss")})
        last = step + 1 == n_steps
        if eval_fn is not None and eval_every and ((step + 1) % eval_every == 0 or last):
            eval_log.write({"step": step + 1, **{k: float(v) for k, v in eval_fn(state).items()}})
        out_of_time = max_seconds is not None and time.time() - t0 > max_seconds
        if (step + 1) % checkpoint_every == 0 or last or out_of_time:
            save_checkpoint(ckpt, state, {"step": step + 1, "time_s": t_before + time.time() - t0})
        if out_of_time:
            break
    bar.close()
    return state


RUN_FILES = ("checkpoint.eqx", "best.eqx", "metrics.csv", "eval.csv")


def prepare_workdir(workdir, record: dict, steps: int, restart: bool = False,
                    may_change: tuple = ("steps", "workdir"), defaults: dict | None = None) -> Path:
    """Make `workdir` ready for a resumable run of the settings `record` (a JSON-able dict),
    written to `workdir/config.yaml`, the run's one record of its settings.

    A workdir with a checkpoint resumes only under the same settings: `record` is compared
    with the `config.yaml` written when the run started, and any difference (other than
    `may_change`, e.g. more `steps`) stops with a list of them; a setting the stored record
    lacks (added since) compares as its value in `defaults` (`config.field_defaults`). A checkpoint already past
    `steps` stops too. `restart` deletes the previous run's checkpoints and metrics instead.
    Checks that the folder is writable before any work. Returns the folder."""
    from curvax.validation import check_writable

    workdir = check_writable(workdir, "workdir")
    record = json.loads(json.dumps(record, default=str))  # plain types, as read back: lists, strings
    stored = workdir / "config.yaml"
    if restart:
        for name in RUN_FILES + ("config.yaml",):
            (workdir / name).unlink(missing_ok=True)
    done = checkpoint_step(workdir / "checkpoint.eqx")
    if done:
        check_same_run(workdir, record, may_change, defaults)
    if done > steps:
        raise ValueError(f"{workdir}: the checkpoint is at step {done}, past steps = {steps}; ask for at "
                         f"least {done} steps, or --restart")
    atomic_write(stored, yaml.safe_dump(record, sort_keys=False))
    return workdir


def check_same_run(workdir, record: dict, may_change: tuple = ("steps", "workdir"),
                   defaults: dict | None = None,
                   fix: str = "Rerun with --restart to start afresh, or choose another workdir") -> None:
    """ValueError listing the settings (`config.changed_settings`) in which the run recorded in
    `workdir/config.yaml` differs from `record`, then `fix`; nothing when there is no record."""
    from curvax.config import changed_settings

    stored = Path(workdir) / "config.yaml"
    if not stored.is_file():
        return
    old = yaml.safe_load(stored.read_text()) or {}
    diff = changed_settings(old, json.loads(json.dumps(record, default=str)), may_change, defaults)
    if diff:
        raise ValueError(f"{workdir} holds a run (step {checkpoint_step(Path(workdir) / 'checkpoint.eqx')}) with "
                         "different settings: " + "; ".join(diff) + f". {fix}")


def file_fingerprint(path) -> str | None:
    """sha256 (16 hex digits) of a file (of a phonondb folder: its manifest.csv), or None if
    `path` is neither (a registered name, a spec)."""
    import hashlib

    path = Path(path)
    if path.is_dir():
        path = path / "manifest.csv"
    if not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
