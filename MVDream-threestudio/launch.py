"""Train / test a threestudio system (MindSpore port of threestudio's launch.py).

MVDream's two-stage recipe (configs/mvdream-sd21.yaml):

  # stage 1, 64x64: stops at the first data.resolution_milestones step (5000), saves a checkpoint
  python launch.py --train system.prompt_processor.prompt="an astronaut riding a horse"
  # stage 2, 256x256: continues from that checkpoint (the run's own config) to trainer.max_steps
  python launch.py --train --train_highres resume=outputs/<name>/<tag>@<time>/ckpts/step5000.ckpt \\
      system.use_recompute=true
  # render the test orbit (frames + mp4) of a checkpoint
  python launch.py --test resume=outputs/<name>/<tag>@<time>/ckpts/last.ckpt
  # export a vertex-coloured mesh (save/it<N>-export/model.obj; see also extract_color_mesh.py)
  python launch.py --export resume=outputs/<name>/<tag>@<time>/ckpts/last.ckpt

Without --config, resume=<trial>/ckpts/<ckpt> uses that trial's configs/parsed.yaml (key=value
overrides apply on top; an explicit --config wins). Run both stages in one process with
trainer.stop_at_milestone=false.
"""
import argparse
import logging
import os
import signal
import sys
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join("configs", "mvdream-sd21.yaml")

EPILOG = """\
key=value overrides (any config key), e.g.:
  system.prompt_processor.prompt="a cat"   the text prompt (the default config falls back to
                                           "an astronaut riding a horse"; other configs need it)
  resume=PATH                              continue training from / test a checkpoint (*.ckpt);
                                           without --config its trial's configs/parsed.yaml is used
  system.weights=PATH                      initialise the model from a checkpoint (weights only)
  trainer.max_steps=20                     number of training steps
  trainer.stop_at_milestone=false          train straight through the resolution milestones
                                           (default true: a plain --train stops at the next
                                           data.resolution_milestones step and saves a checkpoint)
  system.guidance.half_precision_weights=false trainer.precision=32
                                           fp32 guidance. half_precision_weights=true (the
                                           default, as in the original) or trainer.precision=16-mixed:
                                           fp16 guidance, for Ascend (~3x slower on CPU)
  trainer.skip_nonfinite_steps=true        skip steps with a NaN/Inf loss or gradient (default: stop,
                                           keeping the last good checkpoint)

Outputs: <exp_root_dir>/<name>/<tag>@<YYYYMMDD-HHMMSS>/ with configs/{raw,parsed}.yaml,
ckpts/step<N>.ckpt + last.ckpt, save/ (validation and test images, video), metrics.csv, log.txt.
resume=<trial>/ckpts/last.ckpt without --config continues in that trial folder; with an explicit
--config (e.g. the config file you trained with) a resumed run writes a new trial folder.
Ctrl-C / SIGTERM during training saves ckpts/last.ckpt at the step boundary (exit 130 / 143);
a second one stops at once.
"""


class TqdmHandler(logging.StreamHandler):
    """Log lines that don't break the progress bar."""

    def emit(self, record):
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one ``error: ...`` line (exit 2), like every other bad input."""

    def error(self, message):
        self.exit(2, f"error: {message}; see --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        description="Text-to-3D with MVDream (MindSpore threestudio).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None,
                        help=f"config file (default: the trial's configs/parsed.yaml of resume=<trial>/ckpts/..., "
                             f"else {DEFAULT_CONFIG})")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--train", action="store_true", help="train (stops at the next resolution milestone)")
    mode.add_argument("--test", action="store_true", help="render the test views of resume=CKPT (frames + mp4)")
    mode.add_argument("--export", action="store_true",
                      help="export a vertex-coloured mesh of resume=CKPT (geometry.isosurface_* and "
                           "system.exporter.fmt/save_name; y-up)")
    parser.add_argument("--train_highres", action="store_true",
                        help="with --train and resume=CKPT: continue to trainer.max_steps (high-resolution stage)")
    parser.add_argument("--gif", action="store_true", help="with --test (or after training): also write a gif")
    parser.add_argument("--device_target", default=None, choices=["CPU", "Ascend", "GPU"],
                        help="MindSpore device (default: the best present: Ascend, then GPU, then CPU; "
                             "logged); always PyNative mode")
    parser.add_argument("--prompts_file", default=None,
                        help="with --train: one trial per prompt of this file (one per line); under msrun "
                             "the ranks share the list; re-running it skips the prompts already done")
    parser.add_argument("--verbose", action="store_true", help="debug logging and tracebacks on errors")
    return parser


def setup_logging(verbose: bool) -> logging.Logger:
    logger = logging.getLogger("threestudio")
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    if not logger.handlers:
        handler = TqdmHandler()
        handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
        logger.addHandler(handler)
    return logger


def add_log_file(logger: logging.Logger, path: str):
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s"))
    logger.addHandler(handler)


def choose_config(config_arg, extras, logger):
    """(config path, fallback prompt): an explicit --config; else the trial config of resume=;
    else the default config, which falls back to the README's example prompt."""
    from threestudio.utils.experiment import DEFAULT_PROMPT, config_of_checkpoint, resume_argument

    if config_arg is not None:
        if not os.path.isfile(config_arg) and os.path.isfile(os.path.join(HERE, config_arg)):
            return os.path.join(HERE, config_arg), None  # configs/... works from any directory
        return config_arg, None
    resume = resume_argument(extras)
    if resume is not None:
        if not os.path.isfile(resume):
            raise UsageError(f"checkpoint not found: {resume}")
        found = config_of_checkpoint(resume)
        if found is None:
            raise UsageError(f"{resume} is not inside a trial folder (<trial>/ckpts/ next to <trial>/configs/"
                             "parsed.yaml): pass the run's config with --config <config.yaml>")
        logger.info("config: %s (the run of resume=%s; --config overrides it)", found, resume)
        return found, None
    return os.path.join(HERE, DEFAULT_CONFIG), DEFAULT_PROMPT


def run(args, extras, logger) -> int:
    if args.prompts_file:
        return run_prompts_file(args, extras, logger)
    train_or_test(args, extras, logger)
    return 0


def train_or_test(args, extras, logger, ranks=None):
    """One trial; returns its directory (None on data-parallel ranks other than 0). ``ranks``:
    None joins ``msrun``'s ranks (data-parallel training when there are several)."""
    if args.train_highres and not args.train:
        raise UsageError("--train_highres goes with --train")
    from omegaconf import OmegaConf

    from threestudio.utils.experiment import (
        PROMPT_KEY, checkpoint_config, clean_cli_args, dump_configs, load_experiment, make_trial_dir,
        seed_everything, trainer_config)

    extras = clean_cli_args(extras)
    config_path, fallback = choose_config(args.config, extras, logger)
    cfg, raw, resolved = load_experiment(config_path, extras, fallback_prompt=fallback)
    if fallback is not None and not any(a.startswith(PROMPT_KEY + "=") for a in extras) \
            and OmegaConf.select(raw, PROMPT_KEY) == fallback:
        logger.info('no prompt given: using the example prompt "%s"; set your own with %s="a cat"',
                    fallback, PROMPT_KEY)
    trainer_cfg, ckpt_cfg = trainer_config(cfg), checkpoint_config(cfg)
    check_run(args, cfg, trainer_cfg)

    if ranks is None:  # a single trial (a prompt list set up the runtime and joined msrun once)
        from mvdream.ranks import join_msrun
        from mvdream.runtime import setup_runtime

        setup_runtime(args.device_target, report=logger.info)
        ranks = join_msrun()
        if ranks.world > 1:
            logger.info("%s (pid %d)", ranks, os.getpid())
            if not args.train:  # rendering and export run on one process
                if not ranks.is_writer:
                    return None
                from mvdream.ranks import Ranks

                ranks = Ranks()
    seed_everything(cfg.seed)
    if args.export:
        return run_export(cfg, raw, resolved, logger)

    import threestudio
    from threestudio.utils.checkpoint import load_checkpoint, remove_stale_temporaries
    from threestudio.utils.saving import free_name
    from threestudio.utils.trainer import Trainer, restore_checkpoint

    ckpt = load_checkpoint(cfg.resume) if cfg.resume else None  # fail early on a bad path
    if cfg.resume and ranks.is_writer:  # only the writer touches files
        remove_stale_temporaries(os.path.dirname(os.path.abspath(cfg.resume)))
    dm = threestudio.find(cfg.data_type)(cfg.data, seed=cfg.seed, rank=ranks.rank, world_size=ranks.world)
    dm.setup()
    if args.train and ranks.world > 1:  # before building the model: every rank needs whole view groups
        first = int(ckpt[1].get("global_step", 0)) if ckpt is not None else 0
        dm.check_world_size(first, train_stop(cfg, trainer_cfg, first, args.train_highres))
    system = threestudio.find(cfg.system_type)(cfg.system, resumed=ckpt is not None,
                                               precision=trainer_cfg.precision, eval_only=args.test)
    from threestudio.utils.distributed import GradMeanAllReduce

    trainer = Trainer(trainer_cfg, ckpt_cfg, grad_reducer=GradMeanAllReduce(ranks.world) if ranks.world > 1 else None,
                      writer=ranks.is_writer)
    start_step = 0
    if args.train:
        try:
            trainer.setup_optimization(system)
        except (ValueError, TypeError) as err:  # MindSpore's optimizer checks its arguments
            raise UsageError(f"system.optimizer: {str(err).strip().splitlines()[0]}") from None
    if ckpt is not None:
        start_step = restore_checkpoint(cfg.resume, *ckpt, system, trainer.optimizer, trainer.params,
                                        dm if args.train else None)
        logger.info("resumed from %s at step %d", cfg.resume, start_step)

    if args.train:
        max_steps, stop = trainer_cfg.max_steps, train_stop(cfg, trainer_cfg, start_step, args.train_highres)
        if start_step >= stop:
            raise UsageError(f"the checkpoint is at step {start_step}: nothing to train up to "
                             f"trainer.max_steps={max_steps}")

    if not ranks.is_writer:  # data-parallel rank > 0: same steps, rank 0 writes everything
        trainer.fit(system, dm, start_step, stop)
        return None

    # everything is valid: only now create the trial directory
    trial_dir = make_trial_dir(cfg)
    dump_configs(trial_dir, raw, resolved, cfg)
    add_log_file(logger, os.path.join(trial_dir, "log.txt"))
    logger.info("trial dir: %s", trial_dir)
    trainer.set_trial_dir(trial_dir)
    save_dir = os.path.join(trial_dir, "save")
    earlier = os.path.join(save_dir, f"it{start_step}-test")
    if args.test and (os.path.exists(earlier) or os.path.exists(earlier + ".mp4")):
        save_dir = free_name(save_dir)  # never replace an earlier test of this trial
        logger.warning("%s exists; this test writes to %s instead", earlier, save_dir)
    system.set_save_dir(save_dir)
    formats = ("mp4", "gif") if args.gif else ("mp4",)

    if args.train:
        result = trainer.fit(system, dm, start_step, stop)
        if stop < max_steps:
            logger.info("stopped at resolution milestone %d. Continue with:\n  python launch.py "
                        "--train --train_highres resume=%s", stop, os.path.join(trial_dir, "ckpts", "last.ckpt"))
        else:
            trainer.test(system, dm, formats=formats)
        logger.info("checkpoint: %s", result["checkpoint"])
    elif args.test:
        trainer.test(system, dm, formats=formats)
    return trial_dir


def train_stop(cfg, trainer_cfg, start_step: int, highres: bool) -> int:
    """The step a --train run stops at: the next resolution milestone (unless --train_highres or
    trainer.stop_at_milestone=false), else trainer.max_steps."""
    max_steps = trainer_cfg.max_steps
    if trainer_cfg.stop_at_milestone and not highres:
        later = [int(m) for m in (cfg.data.get("resolution_milestones") or []) if start_step < int(m) < max_steps]
        return later[0] if later else max_steps
    return max_steps


def run_prompts_file(args, extras, logger) -> int:
    """--train --prompts_file: one trial per distinct prompt; msrun's ranks share the list (no
    communication: each rank trains its prompts on its own device). State and summary.tsv in
    <exp_root_dir>/<name>/prompt_lists/<file name>/."""
    import json

    from mvdream.prompt_list import SUMMARY, PromptListState, list_outcome, read_prompts, run_prompt_list
    from mvdream.ranks import Ranks, join_msrun
    from mvdream.runtime import setup_runtime
    from threestudio.utils.experiment import clean_cli_args, load_experiment, trainer_config

    if not args.train or args.train_highres:
        raise UsageError("--prompts_file goes with --train (both stages: trainer.stop_at_milestone=false)")
    extras = clean_cli_args(extras)
    for key in ("system.prompt_processor.prompt=", "resume="):
        if any(e.startswith(key) for e in extras):
            raise UsageError(f"--prompts_file runs one trial per prompt of the file: drop {key}... "
                             "from the command line")
    prompts, duplicates = read_prompts(args.prompts_file)
    if duplicates:
        logger.warning("%d prompt(s) appear more than once in %s and run once: %s", len(duplicates),
                       args.prompts_file, "; ".join(duplicates))

    def overrides(prompt):
        return list(extras) + ["system.prompt_processor.prompt=" + json.dumps(prompt)]

    config_path, _ = choose_config(args.config, extras, logger)
    cfg, _, _ = load_experiment(config_path, overrides(prompts[0]))  # fail before any work
    check_run(args, cfg, trainer_config(cfg))
    state = PromptListState(os.path.join(cfg.exp_root_dir, cfg.name, "prompt_lists",
                                         os.path.basename(args.prompts_file)))
    setup_runtime(args.device_target, report=logger.info)  # once per process: MindSpore keeps its device
    ranks = join_msrun()
    if ranks.world > 1:
        logger.info("%s (pid %d)", ranks, os.getpid())

    def train_one(prompt):
        handlers = list(logger.handlers)
        try:
            return train_or_test(args, overrides(prompt), logger, ranks=Ranks())
        finally:  # each trial's log.txt gets its own trial only
            for handler in [h for h in logger.handlers if h not in handlers]:
                logger.removeHandler(handler)
                handler.close()

    records = run_prompt_list(prompts, ranks, state, train_one, logger)
    summary = state.directory / SUMMARY
    logger.info("summary: %s", summary)
    code, message = list_outcome(records, ranks, summary)
    if message and code == 0:
        logger.warning(message)
    elif message:
        print(f"error: {message}", file=sys.stderr)
    return code


def check_run(args, cfg, trainer_cfg) -> None:
    """The checks of a loaded config that need no model (one line, on every rank, before any work)."""
    from threestudio.utils.experiment import check_trial_location

    check_trial_location(cfg)
    if args.train_highres and cfg.resume is None:
        raise UsageError("--train_highres continues a low-resolution run: give resume=path/to/ckpts/last.ckpt "
                         "(to train both stages in one run use trainer.stop_at_milestone=false)")
    if (args.test or args.export) and cfg.resume is None:
        raise UsageError(f"--{'test' if args.test else 'export'} needs a checkpoint: resume=path/to/ckpts/last.ckpt")
    if args.train and trainer_cfg.max_steps < 0:
        raise UsageError("set trainer.max_steps")
    if args.train and trainer_cfg.max_steps == 0:
        raise UsageError("trainer.max_steps must be >= 1")
    check_data_config(cfg.data)


def check_data_config(data) -> None:
    """Render sizes and batch sizes a user types: positive integers (one line before any work)."""
    for key in ("width", "height", "batch_size", "eval_width", "eval_height", "n_view", "n_val_views",
                "n_test_views"):
        if key not in data:
            continue
        values = data[key] if isinstance(data[key], (list, tuple)) else [data[key]]
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise UsageError(f"data.{key} must be a positive integer (or a list of them), got {data[key]!r}")


def run_export(cfg, raw, resolved, logger) -> int:
    """--export: ``system.exporter`` (threestudio's mesh-exporter keys) on the checkpoint's
    geometry and material (the guidance is never built), as extract_color_mesh.py runs it.
    Everything that can fail runs before the trial directory is created."""
    import threestudio  # noqa: F401 - registers the modules
    from threestudio.systems.trained_fields import build_exporter, load_trained_fields
    from threestudio.utils import mesh_io
    from threestudio.utils.experiment import choose_trial_dir, dump_configs, make_trial_dir
    from threestudio.utils.saving import free_name

    fields = load_trained_fields(cfg.resume, cfg.system_type, cfg.system)
    if fields.system_cfg.exporter_type != "mesh-exporter":
        raise UsageError(f"system.exporter_type '{fields.system_cfg.exporter_type}' is not supported: use mesh-exporter")
    exporter = build_exporter(fields)
    # A new name when an earlier export is there; checked before the long part.
    wanted = mesh_io.default_output(choose_trial_dir(cfg), fields.global_step, exporter.cfg.save_name,
                                    exporter.extension)
    output = free_name(wanted)
    mesh_io.check_outputs(exporter.files(output))
    if output != wanted:
        logger.warning("%s exists; writing %s instead", wanted, output)
    asset = exporter(progress=True)
    trial_dir = make_trial_dir(cfg)
    dump_configs(trial_dir, raw, resolved, cfg)
    add_log_file(logger, os.path.join(trial_dir, "log.txt"))
    logger.info(exporter.summary(asset, exporter.write(asset, output)))
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM outside the training loop (which saves first: threestudio.utils.trainer)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def route_signals_to_main_thread(signums=(signal.SIGINT, signal.SIGTERM)) -> None:
    """Before MindSpore starts its threads: block ``signums`` in every thread and let one watcher
    thread hand each to the main thread's Python handler (``_thread.interrupt_main``). MindSpore
    registers its own SIGINT handler around its ops (it turned Ctrl-C into SIGTERM); this way
    only Python's handlers see the signals. SIGTERM raises ``Terminated`` (one line, exit 143)."""
    import _thread
    import threading

    if threading.current_thread() is not threading.main_thread() or any(
            t.name == "signal-router" for t in threading.enumerate()):
        return

    def terminate(signum, frame):
        raise Terminated(signum)

    signal.signal(signal.SIGTERM, terminate)
    signal.pthread_sigmask(signal.SIG_BLOCK, signums)

    def route():
        while True:
            _thread.interrupt_main(signal.sigwait(signums))

    threading.Thread(target=route, name="signal-router", daemon=True).start()


def interrupted(err: KeyboardInterrupt) -> int:
    """One line for an interrupt; exit 128 + signal number (130 SIGINT, 143 SIGTERM)."""
    signum = getattr(err, "signum", signal.SIGINT)
    name = signal.Signals(signum).name
    checkpoint = getattr(err, "checkpoint", None)
    if checkpoint:
        print(f"error: interrupted by {name} after step {err.step}; saved {checkpoint} "
              f"(continue with: python launch.py --train resume={checkpoint})", file=sys.stderr)
    else:
        print(f"error: interrupted by {name}", file=sys.stderr)
    return 128 + int(signum)


class UsageError(ValueError):
    """Wrong combination of command-line flags."""


def known_errors():
    from omegaconf.errors import OmegaConfBaseException

    from threestudio.utils.checkpoint import CheckpointError
    from threestudio.utils.config import ConfigError
    from threestudio.utils.mesh_export import MeshExportError
    from threestudio.utils.trainer import NonFiniteError

    try:
        from mvdream.checkpoint import CheckpointError as ModelCheckpointError
    except ImportError:  # pragma: no cover
        ModelCheckpointError = CheckpointError
    from mvdream.prompt_list import PromptListError

    return (UsageError, ConfigError, MeshExportError, CheckpointError, ModelCheckpointError,
            NonFiniteError, OmegaConfBaseException, FileNotFoundError, KeyError, PromptListError)


def main(argv=None) -> int:
    sys.path.insert(0, HERE)
    sibling = os.path.join(os.path.dirname(HERE), "MVDream")  # the mvdream package, if not installed
    if os.path.isdir(sibling) and sibling not in sys.path:
        sys.path.append(sibling)
    route_signals_to_main_thread()  # before MindSpore starts its threads

    args, extras = build_parser().parse_known_args(argv)
    logger = setup_logging(args.verbose)
    try:
        return run(args, extras, logger)
    except KeyboardInterrupt as err:  # Ctrl-C; TrainingInterrupted (SIGINT/SIGTERM in training)
        code = interrupted(err)
        if getattr(err, "checkpoint", None) is None:
            # raised in the middle of a MindSpore op: skip the interpreter's teardown, whose
            # native destructors may then abort (files are complete: every write is atomic)
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return code
    except Exception as err:  # one line for known errors, traceback otherwise (or with --verbose)
        if not isinstance(err, known_errors()):
            raise
        if args.verbose:
            traceback.print_exc(limit=-4)
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        from mvdream.ranks import msrun_rank_prefix

        print(f"error: {msrun_rank_prefix()}{str(message).splitlines()[0] if message else type(err).__name__}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
