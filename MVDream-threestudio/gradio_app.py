"""Text-to-3D in the browser: ``python gradio_app.py`` (then open the printed URL).

Start runs ``launch.py`` as a child process (stage 1, then the 256x256 stage 2, the turntable
video and a coloured mesh); the page follows the trial folder under --outputs: step, loss,
step/s, ETA and the latest validation images. Cancel sends SIGINT (the run saves and stops);
Resume continues a cancelled, stopped or finished run from its newest checkpoint. One training
at a time by default (--max_runs); further requests queue. Served offline on 127.0.0.1.
"""
import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import webapp_runs as runs  # next to this script, so on sys.path when it runs

HERE = Path(__file__).resolve().parent


def use_sibling_mvdream():
    """Make the mvdream package importable from the checkout when it is not installed."""
    sibling = HERE.parent / "MVDream"
    if sibling.is_dir() and str(sibling) not in sys.path:
        sys.path.append(str(sibling))


def build_parser():
    from mvdream.webapp import add_server_args

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outputs", default="outputs", help="the runs' folder (exp_root_dir; default outputs)")
    parser.add_argument("--config", default="mvdream-sd21.yaml", choices=runs.shipped_configs(),
                        help="config selected when the page opens (mvdream-tiny.yaml: a quick try)")
    parser.add_argument("--max_runs", type=int, default=1, help="trainings at the same time (default 1)")
    parser.add_argument("--device_target", default=None, choices=["CPU", "Ascend", "GPU"],
                        help="passed to launch.py (default: its own choice, the best device present)")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between page updates")
    return add_server_args(parser)


def _fmt_eta(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def progress_text(prog):
    if "step" not in prog:
        return "step - (starting)"
    parts = [f"step {prog['step']} / {prog.get('max_steps', '?')}", f"loss {prog['loss']:.4g}"]
    if prog.get("steps_per_s"):
        parts.append(f"{prog['steps_per_s']:.2f} step/s")
    if "eta_s" in prog:
        parts.append(f"ETA {_fmt_eta(prog['eta_s'])} to step {prog['stage_end']}")
    return " · ".join(parts)


def status_text(snap, trial, exp_root):
    if snap is None:
        if trial is None:
            return "No run yet: type a prompt and press Start."
        return f"Opened {Path(trial).relative_to(exp_root)}."
    where = f" ({Path(snap['trial']).relative_to(exp_root)})" if snap["trial"] else ""
    if snap["state"] == "queued":
        return (f"queued: position {snap['ahead'] + 1} in the queue, {snap['running']} run(s) busy; "
                f"it starts when a slot is free")
    if snap["state"] == "running":
        return f"running: {snap['label']}{where}"
    if snap["state"] == "cancelling":
        return f"cancelling: waiting for the run to save and stop{where}"
    return f"{snap['message']}{where}"


def build_demo(gr, manager, args):
    exp_root = manager.exp_root
    skip = gr.skip

    def current_trial(view):
        if view.get("job"):
            snap = manager.snapshot(view["job"])
            return snap, (snap["trial"] if snap else None)
        return None, view.get("trial")

    def refresh(view, shown):
        """Every tick: status, progress and log always; images, video, mesh and files when changed.

        It writes only ``shown`` (what the page displays), never ``view``: a tick that overlaps
        a button press would otherwise put the old view back."""
        snap, trial = current_trial(view)
        status = status_text(snap, trial, exp_root)
        prog = runs.progress(trial) if trial else {}
        log = runs.log_tail(snap["log"]) if snap and snap["log"] else ""
        new = {"val": [], "video": None, "mesh": None, "files": []}
        if trial:
            art = runs.artifacts(trial)
            new = {"val": art["val_images"], "video": art["video"],
                   "mesh": next((m for m in art["meshes"] if m.endswith(".glb")), None),
                   "files": [*art["meshes"], *([art["video"]] if art["video"] else []),
                             *([art["ckpt"]] if art["ckpt"] else [])]}
        out = [new[k] if new[k] != shown.get(k, "unset") else skip() for k in ("val", "video", "mesh", "files")]
        return (status, progress_text(prog) if trial else "", *out, log, new)

    def start(prompt, negative, config, steps, seed, overrides, continue_all, view):
        try:
            argv = runs.train_command(config, prompt, negative, steps, seed, overrides, exp_root)
        except runs.RunError as err:
            return f"error: {err}", view
        job = manager.submit_new(argv, prompt.strip(), continue_all=bool(continue_all))
        return f"submitted (job {job})", {"job": job, "trial": None}

    def cancel(view):
        if not view.get("job"):
            return "error: no run of this page to cancel (reopened runs are not running)"
        return manager.cancel(view["job"])

    def resume(view):
        _, trial = current_trial(view)
        if not trial:
            return "error: nothing to resume: start a run or open a past one", view
        try:
            job = manager.submit_resume(trial)
        except runs.RunError as err:
            return f"error: {err}", view
        return f"resume submitted (job {job})", {"job": job, "trial": trial}

    def reopen(choice, view):
        from mvdream.webapp import OutsideRootError, resolve_under

        try:
            trial = resolve_under(exp_root, choice)
        except OutsideRootError as err:
            return f"error: refused: {err}", view
        if not (trial / "configs" / "parsed.yaml").is_file():
            return f"error: {choice} is not a run folder under the outputs folder", view
        return f"Opened {trial.relative_to(exp_root)}.", {"job": None, "trial": str(trial)}

    def past_runs():
        return gr.update(choices=runs.list_trials(exp_root))

    def on_config(config):
        if config not in runs.shipped_configs():
            return skip()
        return runs.config_max_steps(config)

    with gr.Blocks(title="MVDream text-to-3D", analytics_enabled=False) as demo:
        gr.Markdown("## MVDream text-to-3D (MindSpore threestudio)")
        view = gr.State({"job": None, "trial": None})  # the run this page follows (set by the buttons)
        shown = gr.State({})  # what the page displays now (set by the refresh)
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="prompt", placeholder="an astronaut riding a horse", elem_id="prompt")
                negative = gr.Textbox(label="negative prompt (empty: the config's)", elem_id="negative_prompt")
                config = gr.Dropdown(runs.shipped_configs(), value=args.config, label="config",
                                     info="mvdream-tiny.yaml: a quick try with a tiny random model", elem_id="config")
                steps = gr.Number(value=runs.config_max_steps(args.config), precision=0, label="steps",
                                  elem_id="steps")
                seed = gr.Number(value=0, precision=0, label="seed", elem_id="seed")
                continue_all = gr.Checkbox(value=True, label="continue through stage 2, video and mesh",
                                           elem_id="continue_all")
                with gr.Accordion("advanced: key=value overrides", open=False, elem_id="advanced"):
                    overrides = gr.Textbox(lines=3, label="one key=value per line",
                                           placeholder="system.guidance.guidance_scale=50", elem_id="overrides")
                with gr.Row():
                    start_btn = gr.Button("Start", variant="primary", elem_id="start")
                    cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel")
                    resume_btn = gr.Button("Resume", elem_id="resume")
                with gr.Group():
                    past = gr.Dropdown(runs.list_trials(exp_root), value=None, allow_custom_value=True,
                                       label="past runs (under the outputs folder)", elem_id="past_runs")
                    with gr.Row():
                        refresh_btn = gr.Button("Refresh list", size="sm", elem_id="refresh_runs")
                        open_btn = gr.Button("Open", size="sm", elem_id="open_run")
            with gr.Column(scale=2):
                message = gr.Markdown("", elem_id="message")  # answers to the buttons (errors too)
                status = gr.Markdown("No run yet: type a prompt and press Start.", elem_id="status")
                prog = gr.Markdown("", elem_id="progress")
                gallery = gr.Gallery(label="latest validation images", columns=4, height=220, elem_id="val_images")
                with gr.Row():
                    video = gr.Video(label="turntable", elem_id="video", interactive=False, height=300)
                    model = gr.Model3D(label="coloured mesh", elem_id="model3d", height=300,
                                       clear_color=(0.93, 0.93, 0.93, 1.0))
                files = gr.File(label="downloads: mesh (glb/obj/ply), video, checkpoint", file_count="multiple",
                                interactive=False, elem_id="downloads")
                log = gr.Textbox(label="log (last lines)", lines=6, max_lines=12, interactive=False, elem_id="log")

        outputs = [status, prog, gallery, video, model, files, log, shown]
        fast = dict(concurrency_limit=None, show_progress="hidden")
        start_btn.click(start, [prompt, negative, config, steps, seed, overrides, continue_all, view],
                        [message, view], **fast)
        cancel_btn.click(cancel, view, message, **fast)
        resume_btn.click(resume, view, [message, view], **fast)
        open_btn.click(reopen, [past, view], [message, view], **fast)
        refresh_btn.click(past_runs, None, past, **fast)
        config.change(on_config, config, steps, **fast)
        gr.Timer(args.poll).tick(refresh, [view, shown], outputs, **fast)
        demo.load(past_runs, None, past, **fast)  # the list as it is when the page opens
    return demo


def main(argv=None):
    use_sibling_mvdream()
    args = build_parser().parse_args(argv)
    from mvdream.webapp import launch, offline_environment

    if args.max_runs < 1:
        raise ValueError(f"--max_runs must be >= 1, got {args.max_runs}")
    exp_root = Path(args.outputs).resolve()
    exp_root.mkdir(parents=True, exist_ok=True)
    offline_environment()
    log_dir = tempfile.mkdtemp(prefix="mvdream-webapp-logs-")
    manager = runs.RunManager(exp_root, log_dir, max_running=args.max_runs, env=dict(os.environ),
                              device_target=args.device_target)
    import gradio as gr

    demo = build_demo(gr, manager, args).queue(default_concurrency_limit=None)
    try:
        launch(demo, gr, args, allowed_paths=[exp_root], title="MVDream text-to-3D")
    finally:
        manager.shutdown()
        shutil.rmtree(log_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
