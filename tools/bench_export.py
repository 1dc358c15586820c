"""Benchmark the results users keep: the 120-frame test turntable and mesh extraction.

    PYTHONPATH=MVDream-threestudio python tools/bench_export.py [--config configs/mvdream-sd21.yaml]
        [--size 256] [--frames 120] [--mc 256 512] [--modes dense surface] [--repeat 1]
        [--texture 1024 2048] [--texture_resolution 256] [--target_faces 20000] [--chunk 262144]

Uses the config's geometry / material / background / renderer at initialisation (the blob
prior; random hash grid), never the guidance. The occupancy grid is first updated a few times
on that density, as after training. Each measurement runs in its own process so that its peak
resident memory (ru_maxrss) is its own:

  video: render ``--frames`` test views at ``--size``^2 (eval mode: chunked rays), write the PNG
         frames and the 30 fps mp4; seconds in total and frames/s
  Under load (a shared machine) wall seconds stretch; ``cpu_seconds`` (user + system, all
  threads) is the work done, the fairer basis for a ratio.
  mc R : the mesh-exporter at R^3, dense and surface-only measured alternately (``--modes``,
         ``--repeat``): density (chunks of ``--chunk`` points), marching cubes at the geometry's
         isosurface_threshold ('auto' on 64^3 when that leaves the untrained blob empty; the same
         number for both modes), cleanup, vertex colours, .obj written; seconds per stage, points
         evaluated, peak RSS
  texture T: surface-only at ``--texture_resolution``, quadric decimation to ``--target_faces``,
         xatlas, CPU bake at T^2, obj + mtl + png and glb written: seconds per stage, file sizes
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MVDream-threestudio"))
DEFAULT_CONFIG = ROOT / "MVDream-threestudio" / "configs" / "mvdream-sd21.yaml"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build(config: str, size: int):
    from omegaconf import OmegaConf

    import threestudio
    from threestudio.utils.config import parse_structured

    from mvdream.runtime import setup_runtime

    setup_runtime("CPU")
    cfg = OmegaConf.load(config)
    cfg.system.prompt_processor.prompt = "bench"
    OmegaConf.resolve(cfg)
    system_cls = threestudio.find(cfg.system_type)
    scfg = parse_structured(system_cls.Config, OmegaConf.to_container(cfg.system))
    geometry = threestudio.find(scfg.geometry_type)(scfg.geometry)
    material = threestudio.find(scfg.material_type)(scfg.material)
    background = threestudio.find(scfg.background_type)(scfg.background)
    renderer = threestudio.find(scfg.renderer_type)(scfg.renderer, geometry=geometry, material=material,
                                                    background=background)
    data = OmegaConf.to_container(cfg.data)
    data.update(eval_height=size, eval_width=size)
    return geometry, material, renderer, data, cfg


def bench_video(args) -> dict:
    import threestudio
    from threestudio.utils.saving import SaverMixin, image_grid

    geometry, material, renderer, data, cfg = build(args.config, args.size)
    renderer.set_train(True)
    for step in range(4):  # the occupancy grid as a trained run would have it
        renderer.update_step(0, step * 16)
    renderer.set_train(False)
    dm = threestudio.find(cfg.data_type)(data, seed=0)
    dm.setup()
    dataset = dm.test_dataset
    n = min(args.frames, len(dataset))
    saver = SaverMixin()
    out_dir = tempfile.mkdtemp(prefix="bench_video_")
    saver.set_save_dir(out_dir)
    t0 = time.time()
    render_s = 0.0
    samples = 0
    for i in range(n):
        batch = dataset[i]
        t = time.time()
        out = renderer(**batch)
        items = [{"type": "rgb", "img": out["comp_rgb"][0]}]
        if "comp_normal" in out:
            items.append({"type": "rgb", "img": out["comp_normal"][0]})
        items.append({"type": "grayscale", "img": out["opacity"][0, :, :, 0]})
        grid = image_grid(items)
        render_s += time.time() - t
        samples += renderer.stats.get("n_samples", 0)
        saver.save_image(f"test/{i}.png", grid)
    t = time.time()
    saver.save_img_sequence("test", "test", save_format="mp4", fps=30)
    video_s = time.time() - t
    total = time.time() - t0
    return {"stage": "video", "frames": n, "size": args.size, "seconds": round(total, 2),
            "frames_per_s": round(n / total, 3), "render_seconds": round(render_s, 2),
            "mp4_seconds": round(video_s, 2), "mean_samples_per_frame": int(samples / max(n, 1)),
            "test_views_in_dataset": len(dataset), "peak_rss_mb": round(peak_rss_mb(), 1)}


def fixed_threshold(geometry) -> float:
    """The config's isosurface_threshold, or 'auto' on a 64^3 grid when the untrained blob
    (peak ~softplus(density_blob_scale) ~ 10) never reaches it: one number for every stage."""
    from threestudio.utils import isosurface as iso

    bbox = geometry.bbox.asnumpy()
    field = iso.evaluate_grid(lambda p: geometry.forward_field(p)[0], bbox, 64)
    level = iso.resolve_threshold(field, geometry.cfg.isosurface_threshold)
    return level if field.min() < level < field.max() else iso.auto_threshold(field)


def run_exporter(args, options: dict, name: str):
    """(asset, paths written, seconds in all) of the mesh-exporter on the config's fields."""
    import threestudio

    geometry, material, _, _, _ = build(args.config, args.size)
    level = fixed_threshold(geometry)
    exporter = threestudio.find("mesh-exporter")({"threshold": level, "chunk": args.chunk, **options},
                                                 geometry=geometry, material=material)
    t0, c0 = time.time(), cpu_seconds()
    asset = exporter()
    paths = exporter.write(asset, os.path.join(tempfile.mkdtemp(prefix="bench_export_"), name))
    asset.seconds["cpu"] = cpu_seconds() - c0  # all threads: the work, whatever the machine's load
    return asset, paths, time.time() - t0


def bench_mc(args, resolution: int, surface_only: bool) -> dict:
    """Extraction (density, marching cubes, cleanup), vertex colours, .obj written."""
    asset, paths, seconds = run_exporter(args, {"fmt": "obj", "save_uv": False, "save_texture": False,
                                                "resolution": resolution, "surface_only": surface_only}, "model.obj")
    mode = "surface" if surface_only else "dense"
    return {"stage": f"mc{resolution}-{mode}", "resolution": resolution, "mode": mode,
            "threshold": round(asset.threshold, 5), "vertices": len(asset.mesh.vertices),
            "faces": len(asset.mesh.faces), "evaluated_points": asset.evaluated_points,
            "evaluated_fraction": round(asset.evaluated_points / resolution ** 3, 4), "seconds": round(seconds, 2),
            **{f"{k}_seconds": round(v, 2) for k, v in asset.seconds.items()},
            "peak_rss_mb": round(peak_rss_mb(), 1), "chunk": args.chunk,
            "obj_mb": round(os.path.getsize(paths[0]) / 2 ** 20, 2)}


def bench_texture(args, size: int) -> dict:
    """Surface-only extraction at --texture_resolution, decimation to --target_faces, xatlas,
    CPU bake at size^2, obj + mtl + png written; the same asset also encoded as a glb."""
    from threestudio.utils import mesh_io

    asset, paths, seconds = run_exporter(args, {"fmt": "obj-mtl", "save_uv": True, "save_texture": True,
                                                "texture_size": size, "texture_format": "png",
                                                "resolution": args.texture_resolution,
                                                "target_faces": args.target_faces}, "model.obj")
    glb = os.path.splitext(paths[0])[0] + ".glb"
    t = time.time()
    mesh_io.write_files(mesh_io.encode_files(asset.mesh, [glb], "glb", normals=False))
    glb_seconds = time.time() - t
    return {"stage": f"texture{size}", "texture_size": size, "resolution": args.texture_resolution,
            "extracted_faces": asset.extracted_faces, "faces": len(asset.mesh.faces),
            "seconds": round(seconds, 2), **{f"{k}_seconds": round(v, 2) for k, v in asset.seconds.items()},
            "glb_write_seconds": round(glb_seconds, 2),
            "texels_baked_fraction": round(float(asset.texture_mask.mean()), 3),
            "file_mb": {os.path.basename(p): round(os.path.getsize(p) / 2 ** 20, 2) for p in paths + [glb]},
            "peak_rss_mb": round(peak_rss_mb(), 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--size", type=int, default=256, help="eval height = width of the test frames")
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--mc", type=int, nargs="*", default=[256, 512], help="marching-cubes resolutions")
    parser.add_argument("--modes", nargs="*", default=["dense", "surface"], choices=["dense", "surface"],
                        help="extraction modes, measured alternately per resolution")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of the alternation (A B A B ...)")
    parser.add_argument("--texture", type=int, nargs="*", default=[1024, 2048], help="texture sizes to bake")
    parser.add_argument("--texture_resolution", type=int, default=256, help="grid of the textured export")
    parser.add_argument("--target_faces", type=int, default=20000, help="decimation before unwrapping")
    parser.add_argument("--chunk", type=int, default=1 << 18)
    parser.add_argument("--only", help=argparse.SUPPRESS)  # child process: one measurement
    args = parser.parse_args()
    if args.only:
        if args.only == "video":
            result = bench_video(args)
        elif args.only.startswith("texture"):
            result = bench_texture(args, int(args.only[len("texture"):]))
        else:
            resolution, mode = args.only[2:].split("-")
            result = bench_mc(args, int(resolution), mode == "surface")
        print("RESULT " + json.dumps(result))
        return
    from threestudio.models.hashgrid import available_backends

    print(json.dumps({"config": args.config, "cpus": os.cpu_count(), "load_avg": os.getloadavg(),
                      "hashgrid_backends": available_backends(),
                      "impl": os.environ.get("THREESTUDIO_HASHGRID_IMPL", "auto")}))
    stages = (["video"] if args.frames > 0 else []) + [
        f"mc{r}-{m}" for r in args.mc for _ in range(args.repeat) for m in args.modes] + [
        f"texture{t}" for t in args.texture]
    for stage in stages:
        print(json.dumps({"starting": stage, "load_avg": os.getloadavg()}))
        sys.stdout.flush()
        cmd = [sys.executable, "-W", "ignore", __file__, "--only", stage, "--config", args.config,
               "--size", str(args.size), "--frames", str(args.frames), "--chunk", str(args.chunk),
               "--texture_resolution", str(args.texture_resolution), "--target_faces", str(args.target_faces)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(json.dumps({"stage": stage, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}))
        else:
            print(lines[-1][len("RESULT "):])
        sys.stdout.flush()


if __name__ == "__main__":
    main()
