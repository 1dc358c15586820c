"""Training runs for the text-to-3D web app: queue, child processes, and what a trial folder says.

``launch.py`` and ``extract_color_mesh.py`` run as child processes (never imported), so the
server stays responsive and a crash of a run cannot take it down. Everything the page shows is
read back from the trial folder: ``metrics.csv`` (step, loss, step/s), ``configs/parsed.yaml``
(max_steps, milestones), ``save/it<N>-val/`` (validation images), ``save/it<N>-test.mp4`` (the
turntable video), ``save/it<N>-export/model.*`` (the mesh) and ``ckpts/`` (checkpoints).

A job is one trial folder and the sequence of children that brings it to the end:
train (stage 1, stops at the resolution milestone) -> train --train_highres (stage 2) ->
mesh export. Resume plans the next child from the folder alone (``plan_next``), so it works
for a cancelled run, a run stopped at the milestone, a finished run, and a reopened past run.
No MindSpore here: the server process stays small.
"""
import csv
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

HERE = Path(__file__).resolve().parent
LAUNCH = HERE / "launch.py"
EXPORTER = HERE / "extract_color_mesh.py"
CONFIG_DIR = HERE / "configs"
# keys the page sets itself, or that would reach outside the outputs folder
RESERVED_KEYS = ("exp_root_dir", "resume", "name", "tag", "timestamp", "use_timestamp")
OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*=")


class RunError(ValueError):
    """Input the page reports as one ``error: ...`` line."""


def shipped_configs():
    """Names of the configs in MVDream-threestudio/configs (the only ones the page offers)."""
    return sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))


def config_max_steps(config_name):
    from omegaconf import OmegaConf

    return int(OmegaConf.load(CONFIG_DIR / config_name).trainer.max_steps)


def safe_tag(prompt):
    """The trial folder's tag from a prompt: letters, digits, '-' and '_' only (a prompt with
    '/' or '..' cannot place the folder outside the outputs folder)."""
    tag = re.sub(r"[^A-Za-z0-9_-]+", "_", prompt.strip()).strip("_")
    return tag[:80] or "run"


def parse_overrides(text):
    """``key=value`` lines (or space-separated) -> list; RunError on anything else."""
    overrides = []
    for line in (text or "").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not OVERRIDE.match(line):
            raise RunError(f"override '{line}' is not key=value; write one key=value per line, "
                           f"e.g. trainer.max_steps=2000")
        key = line.split("=", 1)[0]
        if key in RESERVED_KEYS:
            raise RunError(f"override '{key}' is set by the page; use the Resume button or the outputs folder "
                           f"option of the app instead")
        overrides.append(line)
    return overrides


def train_command(config_name, prompt, negative_prompt, steps, seed, overrides, exp_root):
    """Argument list of the first ``launch.py --train`` of a new run (validated here)."""
    if config_name not in shipped_configs():
        raise RunError(f"unknown config '{config_name}'; choose one of {', '.join(shipped_configs())}")
    prompt = (prompt or "").strip()
    if not prompt:
        raise RunError("the prompt is empty; type what the 3D object should be")
    try:
        steps, seed = int(steps), int(seed)
    except (TypeError, ValueError):
        raise RunError("steps and seed must be whole numbers") from None
    if steps < 1:
        raise RunError(f"steps must be >= 1, got {steps}")
    argv = ["--config", str(CONFIG_DIR / config_name), "--train",
            f"system.prompt_processor.prompt={prompt}", f"tag={safe_tag(prompt)}",
            f"trainer.max_steps={steps}", f"seed={seed}", f"exp_root_dir={exp_root}"]
    if (negative_prompt or "").strip():
        argv.append(f"system.prompt_processor.negative_prompt={negative_prompt.strip()}")
    return argv + parse_overrides(overrides)


# ---------------------------------------------------------------- reading a trial folder
def _numbered(paths, pattern):
    """[(N, path)] for paths whose name matches ``pattern`` with one integer group, sorted by N."""
    out = []
    for p in paths:
        m = re.fullmatch(pattern, p.name)
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out, key=lambda t: t[0])


def read_metrics(trial):
    """Last row of metrics.csv as a dict (step, loss, steps_per_s), or {}."""
    path = Path(trial) / "metrics.csv"
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return {}
    for row in reversed(rows):
        try:
            return {"step": int(row["step"]), "loss": float(row["loss"]),
                    "steps_per_s": float(row.get("steps_per_s") or 0.0)}
        except (KeyError, TypeError, ValueError):
            continue  # a row being written
    return {}


def read_config(trial):
    from omegaconf import OmegaConf

    path = Path(trial) / "configs" / "parsed.yaml"
    try:
        cfg = OmegaConf.load(path)
    except Exception:  # not written yet, or being rewritten
        return None
    milestones = [int(m) for m in (OmegaConf.select(cfg, "data.resolution_milestones") or [])]
    return {"max_steps": int(OmegaConf.select(cfg, "trainer.max_steps", default=-1)),
            "milestones": milestones,
            "stop_at_milestone": bool(OmegaConf.select(cfg, "trainer.stop_at_milestone", default=True)),
            "prompt": str(OmegaConf.select(cfg, "system.prompt_processor.prompt", default="") or ""),
            "resolution": int(OmegaConf.select(cfg, "system.geometry.isosurface_resolution", default=256) or 256)}


def latest_checkpoint(trial):
    """(step, path) of the newest checkpoint in ``trial``/ckpts, or (None, None).

    last.ckpt is preferred; its step is that of the step<N>.ckpt written with it, or else the last
    logged step (a checkpoint saved on interrupt has no step<N> twin)."""
    ckpts = Path(trial) / "ckpts"
    numbered = _numbered(ckpts.glob("step*.ckpt"), r"step(\d+)\.ckpt")
    last = ckpts / "last.ckpt"
    if last.is_file():
        for step, path in reversed(numbered):
            if abs(path.stat().st_mtime - last.stat().st_mtime) < 5 and path.stat().st_size == last.stat().st_size:
                return step, last
        return read_metrics(trial).get("step"), last
    if numbered:
        return numbered[-1]
    return None, None


def artifacts(trial):
    """What a trial folder holds for the page: validation images, video, meshes, checkpoint."""
    save = Path(trial) / "save"
    vals = _numbered([p for p in save.glob("it*-val") if p.is_dir()], r"it(\d+)-val")
    videos = _numbered(save.glob("it*-test.mp4"), r"it(\d+)-test\.mp4")
    exports = _numbered([p for p in save.glob("it*-export") if p.is_dir()], r"it(\d+)-export")
    meshes = []
    if exports:
        meshes = [exports[-1][1] / f"model.{ext}" for ext in ("glb", "obj", "ply")]
        meshes = [m for m in meshes if m.is_file()]
    val_images = []
    if vals:
        val_images = sorted(vals[-1][1].glob("*.png"), key=lambda p: (len(p.name), p.name))
    step, ckpt = latest_checkpoint(trial)
    return {"val_step": vals[-1][0] if vals else None, "val_images": [str(p) for p in val_images],
            "video": str(videos[-1][1]) if videos else None, "video_step": videos[-1][0] if videos else None,
            "meshes": [str(m) for m in meshes], "ckpt": str(ckpt) if ckpt else None, "ckpt_step": step}


def progress(trial, started=None):
    """Step, loss, step/s and ETA of a trial (ETA to the end of the current stage)."""
    metrics, cfg = read_metrics(trial), read_config(trial)
    out = dict(metrics)
    if cfg:
        out["max_steps"] = cfg["max_steps"]
        step = metrics.get("step", 0)
        later = [m for m in cfg["milestones"] if step < m < cfg["max_steps"]] if cfg["stop_at_milestone"] else []
        out["stage_end"] = later[0] if later else cfg["max_steps"]
        rate = metrics.get("steps_per_s") or 0.0
        if rate > 0 and step < out["stage_end"]:
            out["eta_s"] = (out["stage_end"] - step) / rate
    return out


def plan_next(trial):
    """(label, script, argv) of the child that moves ``trial`` on, or None when it is complete.

    RunError when it cannot be continued (no checkpoint: stopped before its first save)."""
    trial = Path(trial)
    cfg = read_config(trial)
    if cfg is None:
        raise RunError(f"{trial.name} has no configs/parsed.yaml; it is not a run folder")
    step, ckpt = latest_checkpoint(trial)
    if ckpt is None:
        raise RunError(f"{trial.name} has no checkpoint to resume from (it stopped before its first save); "
                       f"start it again")
    parsed = str(trial / "configs" / "parsed.yaml")
    max_steps = cfg["max_steps"]
    if step is None or step < max_steps:
        argv = ["--config", parsed, "--train", f"resume={ckpt}"]
        first = cfg["milestones"][0] if cfg["milestones"] else None
        if cfg["stop_at_milestone"] and first is not None and step is not None and step >= first:
            argv.insert(2, "--train_highres")
            return f"stage 2 (from step {step})", LAUNCH, argv
        return f"training (from step {step})", LAUNCH, argv
    art = artifacts(trial)
    if art["video"] is None or art["video_step"] != step:
        return "rendering the turntable video", LAUNCH, ["--config", parsed, "--test", f"resume={ckpt}"]
    if not any(m.endswith(".glb") for m in art["meshes"]):
        out = trial / "save" / f"it{step}-export" / "model.glb"
        return "exporting the mesh", EXPORTER, [str(ckpt), "--output", str(out), "--overwrite",
                                                "--resolution", str(cfg["resolution"]), "--no_progress"]
    return None


def finish_meshes(trial):
    """obj and ply next to the exported glb (same mesh, converted with trimesh, written atomically)."""
    import trimesh

    art = artifacts(trial)
    glbs = [m for m in art["meshes"] if m.endswith(".glb")]
    if not glbs:
        return []
    glb = Path(glbs[0])
    mesh = trimesh.load(glb, force="mesh")
    written = []
    for ext in ("obj", "ply"):
        target = glb.with_suffix(f".{ext}")
        if target.is_file():
            continue
        tmp = target.with_name(f".{target.stem}.tmp.{ext}")
        mesh.export(tmp)
        os.replace(tmp, target)
        written.append(str(target))
    return written


def list_trials(exp_root):
    """Trial folders under ``exp_root`` (``<name>/<trial>`` relative paths), newest first."""
    root = Path(exp_root)
    found = [p.parent.parent for p in root.glob("*/*/configs/parsed.yaml")]
    found.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return [str(p.relative_to(root)) for p in found]


def last_error_line(log_path):
    """The child's ``error: ...`` line (launch.py prints one on bad input), or ''."""
    try:
        lines = Path(log_path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if line.startswith("error:"):
            return line
    return ""


def log_tail(log_path, n=12):
    try:
        text = Path(log_path).read_text(errors="replace")
    except OSError:
        return ""
    lines = [seg.rstrip() for line in text.splitlines() for seg in line.split("\r") if seg.strip()]
    return "\n".join(lines[-n:])


# ---------------------------------------------------------------- jobs and the queue
@dataclass
class Job:
    id: int
    title: str
    first: Optional[tuple]  # (label, script, argv) of a new run; None: resume ``trial``
    trial: Optional[str] = None
    continue_all: bool = True  # run stage 2, video and export after stage 1
    state: str = "queued"  # queued, running, cancelling, cancelled, failed, done
    label: str = ""
    message: str = ""
    log: Optional[str] = None
    proc: Optional[subprocess.Popen] = None
    started: Optional[float] = None
    children: List[str] = field(default_factory=list)


class RunManager:
    """At most ``max_running`` jobs run at once; the others wait in order."""

    def __init__(self, exp_root, log_dir, max_running=1, python=sys.executable, env=None, device_target=None):
        self.exp_root = Path(exp_root).resolve()
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.max_running = max(1, int(max_running))
        self.python, self.device_target = python, device_target
        self.env = dict(env if env is not None else os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parent / "MVDream"),
                                                   self.env.get("PYTHONPATH", "")])
        self.jobs = {}
        self.waiting = []  # job ids in order
        self.lock = threading.Condition()
        self.next_id = 1
        self.stopping = False
        threading.Thread(target=self._schedule, name="run-scheduler", daemon=True).start()

    # -- public
    def submit_new(self, argv, title, continue_all=True):
        return self._submit(Job(0, title, ("stage 1", LAUNCH, argv), continue_all=continue_all))

    def submit_resume(self, trial):
        trial = str(Path(trial).resolve())
        with self.lock:
            for job in self.jobs.values():
                if job.trial == trial and job.state in ("queued", "running", "cancelling"):
                    raise RunError(f"{Path(trial).name} is already {job.state} (job {job.id})")
        plan = plan_next(trial)  # RunError when it cannot continue
        if plan is None:
            raise RunError(f"{Path(trial).name} is complete: nothing to resume")
        return self._submit(Job(0, f"resume {Path(trial).name}", None, trial=trial))

    def cancel(self, job_id):
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None:
                return "no run to cancel"
            if job.state == "queued":
                self.waiting.remove(job_id)
                job.state, job.message = "cancelled", "cancelled before it started"
                self.lock.notify_all()
                return job.message
            if job.state in ("running", "cancelling"):
                if job.proc is not None and job.proc.poll() is None:
                    # SIGINT asks launch.py to stop (and save); a second Cancel insists with SIGTERM
                    job.proc.send_signal(signal.SIGINT if job.state == "running" else signal.SIGTERM)
                job.state = "cancelling"  # no further child starts
                return "asked the run to stop"
            return f"the run is {job.state}"

    def queue_position(self, job_id):
        with self.lock:
            return self.waiting.index(job_id) + 1 if job_id in self.waiting else 0

    def snapshot(self, job_id):
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None:
                return None
            return {"id": job.id, "title": job.title, "state": job.state, "label": job.label,
                    "message": job.message, "trial": job.trial, "log": job.log, "started": job.started,
                    "ahead": self.waiting.index(job_id) if job_id in self.waiting else 0,
                    "running": sum(j.state in ("running", "cancelling") for j in self.jobs.values())}

    def shutdown(self, timeout=60):
        """SIGINT every running child (so it can save) and wait for them."""
        with self.lock:
            self.stopping = True
            procs = [j.proc for j in self.jobs.values() if j.proc is not None and j.proc.poll() is None]
            self.lock.notify_all()
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()

    # -- scheduling
    def _submit(self, job):
        with self.lock:
            job.id = self.next_id
            self.next_id += 1
            self.jobs[job.id] = job
            self.waiting.append(job.id)
            self.lock.notify_all()
            return job.id

    def _schedule(self):
        while True:
            with self.lock:
                while not self.stopping and not (
                        self.waiting and sum(j.state in ("running", "cancelling") for j in self.jobs.values())
                        < self.max_running):
                    self.lock.wait()
                if self.stopping:
                    return
                job = self.jobs[self.waiting.pop(0)]
                job.state, job.started = "running", time.time()
            threading.Thread(target=self._run_job, args=(job,), name=f"run-{job.id}", daemon=True).start()

    def _run_job(self, job):
        try:
            self._drive(job)
        except Exception as err:  # a bug here must not leave the slot taken
            with self.lock:
                job.state, job.message = "failed", f"error: {type(err).__name__}: {err}"
        finally:
            with self.lock:
                self.lock.notify_all()

    def _drive(self, job):
        plan = job.first
        while True:
            if plan is None:
                try:
                    plan = plan_next(job.trial)
                except RunError as err:
                    job.state, job.message = "failed", f"error: {err}"
                    return
                if plan is None:
                    finish_meshes(job.trial)
                    job.state, job.message = "done", "finished: video, mesh and checkpoint are ready"
                    return
            label, script, argv = plan
            rc = self._child(job, label, script, argv)
            if job.state == "cancelling":
                job.state = "cancelled"
                saved = latest_checkpoint(job.trial)[0] if job.trial else None
                job.message = (f"cancelled (exit {rc}); " + (f"checkpoint at step {saved}: Resume continues from it"
                               if saved is not None else "no checkpoint was saved"))
                return
            if rc != 0:
                job.state = "failed"
                job.message = last_error_line(job.log) or f"error: {label} stopped with exit code {rc}; see the log"
                return
            if not job.continue_all and script == LAUNCH and job.first is not None and plan is job.first:
                job.state, job.message = "done", "stage 1 finished: Resume runs the next stage"
                return
            plan = None

    def _child(self, job, label, script, argv):
        log = self.log_dir / f"job{job.id}-{len(job.children) + 1}.log"
        cmd = [self.python, "-W", "ignore", str(script), *argv]
        if self.device_target:
            cmd.insert(4, f"--device_target={self.device_target}")
        with self.lock:
            if job.state != "running":
                return 130
            job.label, job.log = label, str(log)
            job.children.append(" ".join(cmd[1:]))
            with open(log, "w") as out:
                # own session: a Ctrl+C in the server's terminal reaches the child only through shutdown()
                job.proc = subprocess.Popen(cmd, cwd=str(HERE), env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        while job.proc.poll() is None:
            if job.trial is None:
                job.trial = self._trial_from_log(log)
            time.sleep(0.5)
        if job.trial is None:
            job.trial = self._trial_from_log(log)
        return job.proc.returncode

    def _trial_from_log(self, log):
        try:
            text = Path(log).read_text(errors="replace")
        except OSError:
            return None
        m = re.search(r"trial dir: (.+)", text)
        if not m:
            return None
        path = Path(m.group(1).strip())
        path = (path if path.is_absolute() else HERE / path).resolve()
        return str(path) if self.exp_root in path.parents else None
