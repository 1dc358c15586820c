"""Multiview previews of a prompt: ``python scripts/t2i.py --text "a cute corgi"``.

Writes a grid PNG (rows = samples, columns = views) and every view as its own PNG.
Same flags as the original MVDream script, plus --steps, --scale, --negative_prompt,
--n_samples, --output, --overwrite and --device_target.
"""
import argparse
import math
import os
import sys
from pathlib import Path


class UsageError(ValueError):
    """Bad command-line input; reported as one line."""


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one ``error: ...`` line (exit 2), like every other bad input."""

    def error(self, message):
        self.exit(2, f"error: {message}; see --help\n")


def parse_args(argv=None):
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name", type=str, default="sd-v2.1-base-4view", help="pretrained model name")
    parser.add_argument("--config_path", type=str, default=None, help="local model config (with --ckpt_path)")
    parser.add_argument("--ckpt_path", type=str, default=None, help="local checkpoint (.pt/.pth/.ckpt/.safetensors)")
    parser.add_argument("--cache_dir", type=str, default=None, help="Hugging Face cache directory")
    parser.add_argument("--text", type=str, default="an astronaut riding a horse")
    parser.add_argument("--suffix", type=str, default=", 3d asset")
    parser.add_argument("--negative_prompt", type=str, default="")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--num_frames", type=int, default=4, help="views per object")
    parser.add_argument("--use_camera", type=int, default=1)
    parser.add_argument("--camera_elev", type=float, default=15)
    parser.add_argument("--camera_azim", type=float, default=90)
    parser.add_argument("--camera_azim_span", type=float, default=360)
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--scale", type=float, default=10.0, help="classifier-free guidance scale")
    parser.add_argument("--n_samples", type=int, default=3, help="rows of the grid")
    parser.add_argument("--fp16", action="store_true", help="run UNet and VAE in float16")
    parser.add_argument("--output", type=str, default="sample.png", help="grid PNG path")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--device_target", type=str, default=None, choices=["CPU", "Ascend", "GPU"],
                        help="MindSpore device (default: the best present: Ascend, then GPU, then CPU)")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--prompts_file", type=str, default=None,
                        help="previews of every prompt of this file (one per line) instead of --text: "
                             "<output without .png>/<prompt>-<id>.png, state and summary.tsv there; "
                             "under msrun the ranks share the list; re-running skips the prompts done")
    return parser.parse_args(argv)


def resolve_output(path, overwrite):
    """Return a grid path that does not clobber another run's file unless asked."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UsageError(f"--output {path} must end in .png")
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise UsageError(f"--output {path}: {parent} is not a directory")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--output {path}: cannot create {parent} ({err.strerror}); choose a writable path") from None
    if not os.access(parent, os.W_OK):
        raise UsageError(f"--output {path}: {parent} is not writable; choose a writable path")
    if overwrite or not path.exists():
        return path
    for n in range(1, 10000):
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
        if not candidate.exists():
            print(f"{path} exists; writing {candidate} instead (pass --overwrite to replace it)")
            return candidate
    raise UsageError(f"--output {path}: too many existing numbered outputs; pass --overwrite")


def validate(args):
    for flag in ("scale", "camera_elev", "camera_azim", "camera_azim_span"):
        value = getattr(args, flag)
        if not math.isfinite(value):
            raise UsageError(f"--{flag} must be a finite number, got {value}")
    if not 0 <= args.seed <= 2 ** 31 - 1 - args.n_samples:
        raise UsageError(f"--seed must be in 0..{2 ** 31 - 1 - max(args.n_samples, 0)}, got {args.seed}")
    if args.size <= 0:
        raise UsageError(f"--size must be a positive multiple of 8, got {args.size}")
    if args.num_frames < 1:
        raise UsageError(f"--num_frames must be >= 1, got {args.num_frames}")
    if args.n_samples < 1:
        raise UsageError(f"--n_samples must be >= 1, got {args.n_samples}")
    if args.steps < 1 or args.steps > 1000:
        raise UsageError(f"--steps must be in 1..1000, got {args.steps}")
    if args.config_path is not None and args.ckpt_path is None:
        raise UsageError("--config_path needs --ckpt_path (the weights that fit that config)")


def downsampling_factor(model_name, config_path):
    """The latent factor of the model config; a config file that is not one is a one-line error."""
    from mvdream.model_zoo import load_model_config
    from mvdream.t2i import latent_downsampling_factor

    try:
        return latent_downsampling_factor(load_model_config(model_name, config_path))
    except FileNotFoundError:
        raise
    except Exception as err:
        if config_path is None:
            raise
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"--config_path {config_path} is not a model config ({reason}); "
                         "pass the YAML that goes with --ckpt_path") from None


def main(argv=None):
    args = parse_args(argv)
    validate(args)
    if args.prompts_file:
        from mvdream.prompt_list import read_prompts

        prompts, duplicates = read_prompts(args.prompts_file)  # before loading any weights
        if duplicates:
            print(f"warning: {len(duplicates)} prompt(s) appear more than once in {args.prompts_file} and run "
                  f"once: {'; '.join(duplicates)}", file=sys.stderr)
        # the list's directory (checked and created as an output would be): previews/list.png -> previews/list/
        output = resolve_output(Path(args.output).with_suffix("") / "summary.png", True).parent
    else:
        output = resolve_output(args.output, args.overwrite)

    import mindspore as ms

    from mvdream.model_zoo import build_model
    from mvdream.ranks import join_msrun
    from mvdream.runtime import setup_runtime

    setup_runtime(args.device_target, report=print)
    # under msrun the ranks share a prompt list (msrun's scheduler process stops in here);
    # a single prompt is rank 0's job
    ranks = join_msrun()
    if not (args.prompts_file or ranks.is_writer):
        return None
    # Check the size against the config before loading gigabytes of weights.
    factor = downsampling_factor(args.model_name, args.config_path)
    if args.size % factor:
        raise UsageError(f"--size must be a positive multiple of {factor} for this model, got {args.size}")
    model = build_model(args.model_name, ckpt_path=args.ckpt_path, cache_dir=args.cache_dir,
                        config_path=args.config_path, weights_dtype=ms.float16 if args.fp16 else None)
    model.set_train(False)
    if args.prompts_file:
        return preview_prompt_list(args, model, prompts, output, ranks)
    return write_previews(args, model, args.text, output)


def write_previews(args, model, text, output):
    """Grid and per-view PNGs of ``text`` (+ ``--suffix``) at ``output``."""
    from PIL import Image

    from mvdream.ldm.models.diffusion.ddim import DDIMSampler
    from mvdream.t2i import preview_grid, sample_previews

    rows = sample_previews(model, DDIMSampler(model), text + args.suffix, args.negative_prompt, args.size,
                           args.num_frames, bool(args.use_camera), args.camera_elev, args.camera_azim,
                           args.camera_azim_span, args.seed, args.steps, args.scale, args.n_samples,
                           verbose=not args.no_progress)

    stem = output.with_suffix("")
    view_paths = []
    for r, images in enumerate(rows):
        for v, image in enumerate(images):
            view_path = Path(f"{stem}_r{r}_v{v}.png")
            Image.fromarray(image).save(view_path)
            view_paths.append(view_path)
    grid = preview_grid(rows)
    Image.fromarray(grid).save(output)
    print(f"wrote {output} ({grid.shape[1]}x{grid.shape[0]}, {args.n_samples} rows x {len(rows[0])} views) "
          f"and {len(view_paths)} view images {view_paths[0].name} ... {view_paths[-1].name}")
    return output


def preview_prompt_list(args, model, prompts, directory, ranks):
    """--prompts_file: previews of this rank's prompts into ``directory``, resumable."""
    import logging
    import re

    from mvdream.prompt_list import PromptListState, list_outcome, prompt_key, run_prompt_list

    logger = logging.getLogger("mvdream.t2i")
    if not logger.handlers:
        logger.addHandler(logging.StreamHandler(sys.stdout))
        logger.setLevel(logging.INFO)
    state = PromptListState(directory)

    def preview(prompt):
        slug = re.sub(r"[^A-Za-z0-9]+", "_", prompt).strip("_")[:60] or "prompt"
        return write_previews(args, model, prompt, directory / f"{slug}-{prompt_key(prompt)[:8]}.png")

    records = run_prompt_list(prompts, ranks, state, preview, logger)
    code, message = list_outcome(records, ranks, directory / "summary.tsv")
    print(f"{'warning' if code == 0 else 'error'}: {message}" if message else
          f"summary: {directory / 'summary.tsv'}", file=sys.stderr if message else sys.stdout)
    if code:
        sys.exit(code)
    return directory


def cli():
    from mvdream.errors import user_facing_errors

    try:
        main()
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except user_facing_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli()
