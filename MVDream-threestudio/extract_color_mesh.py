"""Export a trained NeRF as a vertex-coloured triangle mesh (.obj / .ply / .glb).

  python extract_color_mesh.py outputs/<name>/<trial>/ckpts/last.ckpt
  python extract_color_mesh.py <ckpt> --resolution 512 --threshold auto --largest_component --output cat.glb

Density is sampled on a resolution^3 grid over the geometry's bounding box (in chunks), the
surface ``density = threshold`` is extracted with marching cubes, every vertex gets the learned
albedo, and the file is written y-up (threestudio's world is z-up: (x, y, z) -> (y, z, x); the
object's front view, azimuth 0, faces +z). The config is the trial's configs/parsed.yaml next
to the checkpoint unless --config is given. Default output: <trial>/save/it<step>-export/model.obj.
Components smaller than geometry.isosurface_outlier_n_faces_threshold are dropped when
geometry.isosurface_remove_outliers is set (threestudio's default).
"""
import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt", help="training checkpoint (<trial>/ckpts/last.ckpt) or a trial directory")
    parser.add_argument("--config", help="config of the run (default: <trial>/configs/parsed.yaml)")
    parser.add_argument("--resolution", type=int, default=256, help="grid points per axis (default 256)")
    parser.add_argument("--threshold", default=None,
                        help="density of the surface: a number, or 'auto' (mean density above 1e-5); "
                             "default: geometry.isosurface_threshold of the config")
    parser.add_argument("--largest_component", action="store_true", help="keep only the largest connected part")
    parser.add_argument("--output", help="output file .obj/.ply/.glb (default <trial>/save/it<step>-export/model.obj)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--chunk", type=int, default=1 << 18, help="points per field evaluation (memory bound)")
    parser.add_argument("--device_target", default=None, choices=["CPU", "Ascend", "GPU"],
                        help="MindSpore device (default: the best present: Ascend, then GPU, then CPU)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    return parser


def load_run_config(config_path: str, overrides=()):
    """(ExperimentConfig) of a run; a missing prompt (not needed to export) gets a placeholder."""
    from omegaconf import OmegaConf

    from threestudio.utils.config import ConfigError
    from threestudio.utils.experiment import load_experiment

    if not os.path.isfile(config_path):
        raise ConfigError(f"config file not found: {config_path} (pass --config)")
    extra = list(overrides)
    raw = OmegaConf.load(config_path)
    if OmegaConf.is_missing(raw.get("system", {}).get("prompt_processor", {}), "prompt"):
        extra.append("system.prompt_processor.prompt=unused")
    return load_experiment(config_path, extra)[0]


def run(args) -> dict:
    from mvdream.runtime import setup_runtime

    import threestudio  # noqa: F401 - registers the modules
    from threestudio.utils import mesh_export as mx

    ckpt = args.ckpt
    if os.path.isdir(ckpt):
        ckpt = os.path.join(ckpt, "ckpts", "last.ckpt")
    if not os.path.isfile(ckpt):
        from threestudio.utils.checkpoint import CheckpointError

        raise CheckpointError(f"checkpoint not found: {ckpt}")
    if args.output:
        mx.check_output(args.output, args.overwrite)  # fail before the long part
    cfg = load_run_config(args.config or mx.config_next_to(ckpt))
    setup_runtime(args.device_target, report=print)
    fields = mx.load_trained_fields(ckpt, cfg.system_type, cfg.system)
    output = args.output or mx.default_output(mx.trial_dir_of(ckpt), fields.global_step)
    gcfg = fields.geometry.cfg
    min_faces = gcfg.isosurface_outlier_n_faces_threshold if gcfg.isosurface_remove_outliers else 0
    t0 = time.time()
    summary = mx.export_mesh(fields, output, args.resolution, args.threshold, args.largest_component, min_faces,
                             args.chunk, args.overwrite, progress=not args.no_progress)
    summary["seconds"] = time.time() - t0
    return summary


def main(argv=None) -> int:
    sys.path.insert(0, HERE)
    args = build_parser().parse_args(argv)
    from omegaconf.errors import OmegaConfBaseException

    from threestudio.utils.checkpoint import CheckpointError
    from threestudio.utils.config import ConfigError
    from threestudio.utils.mesh_export import MeshExportError

    try:
        s = run(args)
    except (MeshExportError, CheckpointError, ConfigError, OmegaConfBaseException, KeyError) as err:
        message = str(err.args[0] if isinstance(err, KeyError) and err.args else err)
        print(f"error: {message.splitlines()[0] if message else type(err).__name__}", file=sys.stderr)
        return 1
    if s["auto"]:
        print(f"auto threshold: {s['threshold']:.6g}")
    print(f"mesh: {s['vertices']} vertices, {s['faces']} faces, threshold {s['threshold']:.6g}"
          f"{'' if s['colored'] else ' (no colours)'}, {s['seconds']:.1f} s -> {s['path']} (y-up)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
