"""Export a trained NeRF as a mesh: vertex-coloured (.obj / .ply / .glb) or textured (--texture).

  python extract_color_mesh.py outputs/<name>/<trial>/ckpts/last.ckpt
  python extract_color_mesh.py <ckpt> --resolution 512 --threshold auto --largest_component --output cat.glb
  python extract_color_mesh.py <ckpt> --resolution 512 --target_faces 50000 --texture --texture_size 2048

Density is sampled on a resolution^3 grid over the geometry's bounding box (coarse to fine: only
near the surface, unless --dense; the same triangles), the surface ``density = threshold`` is
extracted with marching cubes, optionally decimated (--target_faces, quadric), and coloured with
the learned albedo: per vertex, and with --texture also baked into a UV-atlas texture
(.obj -> obj + mtl + <name>_texture_kd.png; .glb -> texture embedded). Files are y-up
(threestudio's world is z-up: (x, y, z) -> (y, z, x); the object's front view, azimuth 0, faces
+z). The config is the trial's configs/parsed.yaml next to the checkpoint unless --config is
given; its system.exporter (threestudio's mesh-exporter keys) supplies the other options, the
same implementation launch.py --export runs. Default output: <trial>/save/it<step>-export/model.obj.
Components smaller than geometry.isosurface_outlier_n_faces_threshold are dropped when
geometry.isosurface_remove_outliers is set (threestudio's default).
"""
import argparse
import os
import sys

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
    parser.add_argument("--texture", action="store_true",
                        help="UV atlas and baked albedo texture (.obj: + .mtl + image; .glb: embedded)")
    parser.add_argument("--texture_size", type=int, default=1024, help="texture width = height, a power of two")
    parser.add_argument("--texture_format", default="png", choices=["png", "jpg"], help="texture image (obj)")
    parser.add_argument("--target_faces", type=int, default=None, help="quadric decimation to about N faces")
    parser.add_argument("--dense", action="store_true",
                        help="evaluate the whole grid (default: near the surface only; the same mesh, faster)")
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


def exporter_options(args, output: str) -> dict:
    """The flags as system.exporter keys (threestudio's mesh-exporter)."""
    from threestudio.utils.mesh_export import MeshExportError
    from threestudio.utils.mesh_io import EXTENSION_FMTS

    ext = os.path.splitext(output)[1].lower()
    if ext not in EXTENSION_FMTS:
        raise MeshExportError(f"unknown mesh format '{ext or output}': use .obj, .ply or .glb")
    fmt = "obj-mtl" if ext == ".obj" and args.texture else EXTENSION_FMTS[ext]
    return {"fmt": fmt, "save_uv": args.texture, "save_texture": args.texture, "save_normal": True,
            "texture_size": args.texture_size, "texture_format": args.texture_format,
            "resolution": args.resolution, "threshold": args.threshold, "surface_only": not args.dense,
            "target_faces": args.target_faces, "largest_component": args.largest_component, "chunk": args.chunk}


def run(args) -> dict:
    from mvdream.runtime import setup_runtime

    import threestudio  # noqa: F401 - registers the modules
    from threestudio.systems.trained_fields import build_exporter, load_trained_fields
    from threestudio.utils import mesh_io

    ckpt = args.ckpt
    if os.path.isdir(ckpt):
        ckpt = os.path.join(ckpt, "ckpts", "last.ckpt")
    if not os.path.isfile(ckpt):
        from threestudio.utils.checkpoint import CheckpointError

        raise CheckpointError(f"checkpoint not found: {ckpt}")
    options = exporter_options(args, args.output or "model.obj")
    cfg = load_run_config(args.config or mesh_io.config_next_to(ckpt))
    setup_runtime(args.device_target, report=print)
    fields = load_trained_fields(ckpt, cfg.system_type, cfg.system)
    exporter = build_exporter(fields, options)  # validates the options
    output = args.output or mesh_io.default_output(mesh_io.trial_dir_of(ckpt), fields.global_step)
    mesh_io.check_outputs(exporter.files(output), args.overwrite)  # before the long part
    asset = exporter(progress=not args.no_progress)
    paths = exporter.write(asset, output, args.overwrite)
    return {"auto": asset.auto, "threshold": asset.threshold, "summary": exporter.summary(asset, paths)}


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
    print(s["summary"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
