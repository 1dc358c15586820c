"""The training / test loop (what pytorch-lightning's Trainer did for threestudio).

Per training step ``g`` (0-based; ``global_step`` after it is ``g + 1``, as in Lightning):
  1. ``batch = dm.train_dataset.collate_next(g)`` (resolution / batch size follow the milestones)
  2. ``system.do_update_step(0, g)`` (schedules, occupancy grid)
  3. loss and gradients with ``mindspore.value_and_grad`` over the optimizer's parameters, then
     one optimizer step
  4. every ``log_every_n_steps``: a row of ``metrics.csv``; every ``val_check_interval`` steps:
     validation images ``save/it<g+1>-val/``; every ``checkpoint.every_n_train_steps``:
     ``ckpts/step<g+1>.ckpt`` (+ ``last.ckpt``)
The run ends with a checkpoint at its last step. A checkpoint stores everything that makes a
resumed run continue exactly like an uninterrupted one (see ``checkpoint_payload``).

Safety: a non-finite loss, gradient or parameter stops the run (``NonFiniteError``) before the
optimizer step, so every checkpoint on disk holds finite values (``trainer.skip_nonfinite_steps``
skips such steps instead). The first SIGINT/SIGTERM is acted on at the next step boundary:
``last.ckpt`` is written and ``TrainingInterrupted`` raised; a second one raises it at once.
"""
import contextlib
import csv
import logging
import os
import signal
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import mindspore as ms
import numpy as np
from tqdm import tqdm

from .checkpoint import CheckpointError, check_fingerprint, fingerprint, save_checkpoint
from .experiment import CheckpointConfig, TrainerConfig

logger = logging.getLogger("threestudio")


class NonFiniteError(ArithmeticError):
    """Training met a non-finite loss, gradient or parameter (one line: step, term, last checkpoint)."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM during training. ``checkpoint``: where the state at ``step`` was saved
    (None when a second signal stopped the run at once)."""

    def __init__(self, signum: int, step: Optional[int] = None, checkpoint: Optional[str] = None):
        super().__init__(signum, step, checkpoint)
        self.signum, self.step, self.checkpoint = signum, step, checkpoint


@contextlib.contextmanager
def deferred_signals(signums=(signal.SIGINT, signal.SIGTERM)):
    """Record the first of ``signums`` in the yielded list (the loop acts on it at a step
    boundary); a second one raises ``TrainingInterrupted`` at once. No-op off the main thread."""
    received: List[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum, frame):
        if received:
            raise TrainingInterrupted(signum)
        received.append(signum)
        # os.write, not logging: a handler may run while the logging lock is held
        os.write(2, f"\n[INFO] {signal.Signals(signum).name}: saving ckpts/last.ckpt at the end of this step "
                    "(send it again to stop at once)\n".encode())

    previous = {s: signal.signal(s, handler) for s in signums}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _nonfinite_term(values: Dict[str, float]) -> Optional[str]:
    """The first loss term of a step's log that is not finite (the total last)."""
    names = sorted(k for k in values if k.startswith("train/loss_")) + ["train/loss"]
    for name in names:
        if name in values and not np.isfinite(values[name]):
            return f"{name[len('train/'):]} = {values[name]}"
    return None


def _first_nonfinite(tensors, names) -> Optional[str]:
    """Name of the first tensor holding a NaN/Inf (one reduction per tensor, on the device)."""
    for tensor, name in zip(tensors, names):
        if not bool(ms.ops.isfinite(tensor).all().asnumpy()):
            return name
    return None


class MetricsCSV:
    """``metrics.csv``: one row per logged step; new columns rewrite the header (rare)."""

    def __init__(self, path: str):
        self.path = path
        self.fields: List[str] = []
        if os.path.isfile(path):
            with open(path, newline="") as f:
                self.fields = next(csv.reader(f), [])

    def log(self, row: Dict[str, Any]):
        new = [k for k in row if k not in self.fields]
        if new:
            rows = []
            if os.path.isfile(self.path):
                with open(self.path, newline="") as f:
                    rows = list(csv.DictReader(f))
            self.fields += new
            with open(self.path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.fields)
                writer.writeheader()
                writer.writerows(rows)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields).writerow(row)


def checkpoint_payload(system, optimizer, params, dm, global_step: int, epoch: int = 0):
    """(arrays, meta) of a training checkpoint: module state, optimizer moments and step,
    the global step, every RNG state (data module, guidance, NumPy, Python), the fingerprint."""
    arrays = {f"state.{k}": v for k, v in system.state_arrays().items()}
    if optimizer is not None:
        names = {id(p): n for n, p in system.parameters_and_names()}
        arrays["optimizer.global_step"] = optimizer.global_step.asnumpy().copy()
        for p, m, v in zip(params, optimizer.moments1, optimizer.moments2):
            arrays[f"optimizer.m.{names[id(p)]}"] = m.asnumpy().copy()
            arrays[f"optimizer.v.{names[id(p)]}"] = v.asnumpy().copy()
    meta = {
        "global_step": int(global_step),
        "epoch": int(epoch),
        "rng": system.rng_states(),
        "datamodule_rng": dm.get_rng_state() if dm is not None else None,
        "fingerprint": fingerprint(system.fingerprint_sections()),
        "config": system.fingerprint_sections(),  # to name what differs when a config does not fit
    }
    return arrays, meta


def restore_checkpoint(path: str, arrays, meta, system, optimizer=None, params=None, dm=None) -> int:
    """Load a checkpoint read with ``load_checkpoint`` into the run; returns its global step."""
    sections = system.fingerprint_sections()
    check_fingerprint(path, meta, fingerprint(sections), sections)
    state = {k[len("state."):]: v for k, v in arrays.items() if k.startswith("state.")}
    system.load_state_arrays(state, source=path)
    if optimizer is not None:
        names = {id(p): n for n, p in system.parameters_and_names()}
        try:
            optimizer.global_step.set_data(ms.Tensor(arrays["optimizer.global_step"]).astype(optimizer.global_step.dtype))
            for p, m, v in zip(params, optimizer.moments1, optimizer.moments2):
                m.set_data(ms.Tensor(arrays[f"optimizer.m.{names[id(p)]}"]).astype(m.dtype))
                v.set_data(ms.Tensor(arrays[f"optimizer.v.{names[id(p)]}"]).astype(v.dtype))
        except KeyError as err:
            raise CheckpointError(f"{path} has no optimizer state for {err.args[0]}") from None
        system.set_rng_states(meta["rng"])
        if dm is not None and meta.get("datamodule_rng") is not None:
            dm.set_rng_state(meta["datamodule_rng"])
    step = int(meta["global_step"])
    system.set_step(int(meta.get("epoch", 0)), step)
    return step


class Trainer:
    def __init__(self, cfg: TrainerConfig, ckpt_cfg: CheckpointConfig, trial_dir: Optional[str] = None,
                 grad_reducer: Optional[Callable] = None, writer: bool = True):
        """Data-parallel ranks (``threestudio.utils.distributed``): ``grad_reducer(loss, grads,
        signalled)`` returns the means of loss and gradients over the ranks and whether any rank
        was signalled (so the non-finite guard and SIGINT/SIGTERM act on every rank at the same
        step); only the ``writer`` rank saves checkpoints (last.ckpt on a signal too), metrics
        and validation images."""
        self.cfg, self.ckpt_cfg = cfg, ckpt_cfg
        self.grad_reducer, self.writer = grad_reducer, writer
        self.optimizer = self.params = None
        self._grad_fn = None
        self.last_checkpoint: Optional[str] = None
        if trial_dir is not None:
            self.set_trial_dir(trial_dir)

    def set_trial_dir(self, trial_dir: str):
        """Where checkpoints and metrics.csv go (set once the run is known to be valid)."""
        self.trial_dir = trial_dir
        os.makedirs(trial_dir, exist_ok=True)
        self.ckpt_dir = os.path.join(trial_dir, "ckpts")
        self.metrics = MetricsCSV(os.path.join(trial_dir, "metrics.csv"))

    # ------------------------------------------------------------------ setup
    def setup_optimization(self, system):
        self.optimizer, self.params = system.configure_optimizers()
        n = sum(int(np.prod(p.shape)) for p in self.params)
        logger.info("optimising %d parameter tensors (%d values)", len(self.params), n)

        def loss_fn(batch):  # looked up per call: tools may wrap system.training_loss for timing
            return system.training_loss(batch)

        self._grad_fn = ms.value_and_grad(loss_fn, None, self.params)
        names = {id(p): n for n, p in system.parameters_and_names()}
        self.param_names = [names.get(id(p), p.name) for p in self.params]

    def save(self, system, dm, global_step: int, epoch: int = 0, periodic: bool = True) -> str:
        """``ckpts/step<N>.ckpt`` (``periodic``) and ``ckpts/last.ckpt``; never non-finite values."""
        arrays, meta = checkpoint_payload(system, self.optimizer, self.params, dm, global_step, epoch)
        bad = next((k for k, v in arrays.items() if v.dtype.kind == "f" and not np.isfinite(v).all()), None)
        if bad is not None:
            raise NonFiniteError(f"step {global_step}: {bad} is not finite; not saving it"
                                 f"{self._last_good()}")
        last = os.path.join(self.ckpt_dir, "last.ckpt")
        path = os.path.join(self.ckpt_dir, f"step{global_step}.ckpt") if periodic else last
        save_checkpoint(path, arrays, meta)
        if periodic and self.ckpt_cfg.save_last:
            save_checkpoint(last, arrays, meta)
        logger.info("saved checkpoint %s", path)
        self.last_checkpoint = path
        return path

    def _last_good(self) -> str:
        return (f"; the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint
                else "; no checkpoint was written by this run")

    # ------------------------------------------------------------------ loops
    def train_step(self, system, batch, global_step: Optional[int] = None) -> Optional[float]:
        """One optimizer step on ``batch``; returns the loss, or None for a skipped non-finite
        step (``trainer.skip_nonfinite_steps``). Raises NonFiniteError otherwise.
        ``global_step``: the step's number after it (for messages)."""
        return self._step(system, batch, global_step, False)[0]

    def _step(self, system, batch, global_step: Optional[int], signalled: bool) -> Tuple[Optional[float], bool]:
        """``train_step`` that also returns whether any rank had a pending signal (``signalled``
        on this one): data-parallel ranks decide together, from the all-reduced loss, gradients
        and signal flag of this step, so they skip, stop or go on in step."""
        where = "a training step" if global_step is None else f"step {global_step}"
        loss, grads = self._grad_fn(batch)
        if self.grad_reducer is not None:
            loss, grads, signalled = self.grad_reducer(loss, grads, signalled)
        loss = float(loss.asnumpy())
        problem = None
        if not np.isfinite(loss):
            problem = f"non-finite loss ({_nonfinite_term(getattr(system, 'train_log', {})) or f'loss = {loss}'})"
        else:
            name = _first_nonfinite(grads, self.param_names)
            if name is not None:
                problem = f"the gradient of {name} is not finite (loss {loss:.6g})"
        if problem is not None:
            if self.cfg.skip_nonfinite_steps:
                logger.warning("%s: %s; step skipped (trainer.skip_nonfinite_steps)", where, problem)
                return None, signalled
            raise NonFiniteError(f"{where}: {problem}; training stopped{self._last_good()} "
                                 "(trainer.skip_nonfinite_steps=true skips such steps)")
        self.optimizer(grads)
        name = _first_nonfinite(self.params, self.param_names)
        if name is not None:
            raise NonFiniteError(f"{where}: parameter {name} became non-finite in the optimizer "
                                 f"step; training stopped{self._last_good()}")
        return loss, signalled

    def fit(self, system, dm, start_step: int, stop_step: int) -> Dict[str, Any]:
        """Train steps ``start_step .. stop_step - 1``; returns the loss trace and last checkpoint."""
        if self._grad_fn is None:
            self.setup_optimization(system)
        cfg, every = self.cfg, self.ckpt_cfg.every_n_train_steps
        val_every = cfg.val_check_interval if isinstance(cfg.val_check_interval, int) else 0
        if cfg.num_sanity_val_steps and start_step == 0 and self.writer:
            self.validate(system, dm, start_step, limit=cfg.num_sanity_val_steps)
        losses, last_ckpt, saved_at, skipped = [], None, None, 0
        bar = tqdm(total=stop_step, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
                   disable=not cfg.enable_progress_bar)
        t0 = time.time()
        system.set_train(True)
        with deferred_signals() as received:
            try:
                for step in range(start_step, stop_step):
                    batch = dm.train_dataset.collate_next(step)
                    system.set_step(0, step)
                    system.do_update_step(0, step)
                    global_step = step + 1
                    loss, signalled = self._step(system, batch, global_step, bool(received))
                    if loss is None:
                        skipped += 1
                    else:
                        losses.append(loss)
                    system.set_step(0, global_step)
                    rate = (step + 1 - start_step) / max(time.time() - t0, 1e-9)
                    bar.set_postfix(loss="skipped" if loss is None else f"{loss:.4g}",
                                    res=f"{batch['height']}x{batch['width']}")
                    bar.update(1)
                    # data-parallel ranks stop on the flag they agreed on in this step's all-reduce
                    stop = signalled if self.grad_reducer is not None else bool(received)
                    if self.writer:  # rank 0 logs, validates and saves
                        if cfg.log_every_n_steps and global_step % cfg.log_every_n_steps == 0:
                            row = {"step": global_step, "loss": "" if loss is None else loss,
                                   "steps_per_s": round(rate, 4)}
                            if cfg.skip_nonfinite_steps:
                                row["skipped_steps"] = skipped
                            self.metrics.log({**row, **{k: v for k, v in system.train_log.items()
                                                        if k != "train/loss"}})
                            logger.debug("step %d loss %s (%.2f step/s)", global_step, loss, rate)
                        if val_every and global_step % val_every == 0:
                            self.validate(system, dm, global_step)
                            system.set_train(True)
                        if every and global_step % every == 0:
                            last_ckpt, saved_at = self.save(system, dm, global_step), global_step
                        if stop and saved_at != global_step:
                            self.save(system, dm, global_step, periodic=False)
                    if stop:  # a signal arrived during this step: saved at its boundary, stop
                        raise TrainingInterrupted(received[0] if received else signal.SIGTERM, global_step,
                                                  self.last_checkpoint if self.writer else None)
            finally:
                bar.close()  # before any error line
            if skipped:
                logger.warning("skipped %d of %d steps with a non-finite loss or gradient", skipped,
                               stop_step - start_step)
            if stop_step > start_step and losses:
                logger.info("trained steps %d..%d: final loss %.6g, %.2f step/s", start_step + 1, stop_step,
                            losses[-1], (stop_step - start_step) / max(time.time() - t0, 1e-9))
            if saved_at != stop_step and self.writer:
                last_ckpt = self.save(system, dm, stop_step)
        if received:  # arrived during the final save: it is complete, stop before the test renders
            raise TrainingInterrupted(received[0], stop_step, last_ckpt)
        return {"losses": losses, "checkpoint": last_ckpt, "skipped": skipped}

    def _eval_loop(self, system, dataset, step_fn, desc: str, limit: Optional[int] = None) -> List[str]:
        system.set_train(False)
        n = len(dataset) if limit is None else min(limit, len(dataset))
        written = []
        for i in tqdm(range(n), desc=desc, unit="view", dynamic_ncols=True, leave=False,
                      disable=not self.cfg.enable_progress_bar):
            batch = dataset[i]
            system.do_update_step(system.true_current_epoch, system.true_global_step)
            written.append(step_fn(batch, i))
        return written

    def validate(self, system, dm, global_step: int, limit: Optional[int] = None) -> List[str]:
        system.set_step(system.true_current_epoch, global_step)
        written = self._eval_loop(system, dm.val_dataset, system.validation_step, "val", limit)
        logger.info("step %d: validation images in %s", global_step, os.path.dirname(written[0]) if written else "-")
        return written

    def test(self, system, dm, formats=("mp4",)) -> List[str]:
        frames = self._eval_loop(system, dm.test_dataset, system.test_step, "test")
        videos = system.on_test_epoch_end(formats=formats) if frames else []
        logger.info("test: %d frames in %s%s", len(frames), os.path.dirname(frames[0]) if frames else "-",
                    "".join(f", {v}" for v in videos))
        return frames + videos
