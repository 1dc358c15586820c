"""Benchmark the results users keep: the 120-frame test turntable and mesh extraction.

    PYTHONPATH=MVDream-threestudio python tools/bench_export.py [--config configs/mvdream-sd21.yaml]
        [--size 256] [--frames 120] [--mc 256 512] [--chunk 262144]

Uses the config's geometry / material / background / renderer at initialisation (the blob
prior; random hash grid), never the guidance. The occupancy grid is first updated a few times
on that density, as after training. Each measurement runs in its own process so that its peak
resident memory (ru_maxrss) is its own:

  video: render ``--frames`` test views at ``--size``^2 (eval mode: chunked rays), write the PNG
         frames and the 30 fps mp4; seconds in total and frames/s
  mc R : density on R^3 (chunks of ``--chunk`` points), marching cubes at the geometry's
         isosurface_threshold ('auto' when that leaves the untrained blob empty), vertex colours, .obj written; seconds per stage and peak RSS
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


def bench_mc(args, resolution: int) -> dict:
    import trimesh  # noqa: F401 - imported before timing

    from threestudio.utils import mesh_export as mx

    geometry, material, _, _, _ = build(args.config, args.size)
    geometry.set_train(False)
    bbox = geometry.bbox.asnumpy()
    rss0 = peak_rss_mb()
    t0 = time.time()
    field = mx.evaluate_grid(lambda p: geometry.forward_field(p)[0], bbox, resolution, args.chunk)
    t1 = time.time()
    threshold = mx.resolve_threshold(field, geometry.cfg.isosurface_threshold)
    if not field.min() < threshold < field.max():
        # the initial blob peaks at softplus(density_blob_scale) ~ 10 < the default 25: use 'auto'
        threshold = mx.auto_threshold(field)
    mesh = mx.marching_cubes(field, threshold, bbox)
    del field
    t2 = time.time()
    mesh.colors = mx.vertex_colors(geometry, material, mesh.vertices, args.chunk)
    t3 = time.time()
    path = os.path.join(tempfile.mkdtemp(prefix="bench_mc_"), "model.obj")
    mx.write_mesh(mx.to_y_up(mesh), path)
    t4 = time.time()
    return {"stage": f"mc{resolution}", "resolution": resolution, "threshold": threshold,
            "vertices": len(mesh.vertices), "faces": len(mesh.faces), "seconds": round(t4 - t0, 2),
            "density_seconds": round(t1 - t0, 2), "marching_cubes_seconds": round(t2 - t1, 2),
            "colour_seconds": round(t3 - t2, 2), "write_seconds": round(t4 - t3, 2),
            "points_per_s": int(resolution ** 3 / max(t1 - t0, 1e-9)),
            "peak_rss_mb": round(peak_rss_mb(), 1), "rss_before_mb": round(rss0, 1),
            "chunk": args.chunk, "obj_mb": round(os.path.getsize(path) / 2 ** 20, 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--size", type=int, default=256, help="eval height = width of the test frames")
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--mc", type=int, nargs="*", default=[256, 512], help="marching-cubes resolutions")
    parser.add_argument("--chunk", type=int, default=1 << 18)
    parser.add_argument("--only", help=argparse.SUPPRESS)  # child process: one measurement
    args = parser.parse_args()
    if args.only:
        result = bench_video(args) if args.only == "video" else bench_mc(args, int(args.only[2:]))
        print("RESULT " + json.dumps(result))
        return
    from threestudio.models.hashgrid import available_backends

    print(json.dumps({"config": args.config, "cpus": os.cpu_count(), "load_avg": os.getloadavg(),
                      "hashgrid_backends": available_backends(),
                      "impl": os.environ.get("THREESTUDIO_HASHGRID_IMPL", "auto")}))
    stages = (["video"] if args.frames > 0 else []) + [f"mc{r}" for r in args.mc]
    for stage in stages:
        cmd = [sys.executable, "-W", "ignore", __file__, "--only", stage, "--config", args.config,
               "--size", str(args.size), "--frames", str(args.frames), "--chunk", str(args.chunk)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(json.dumps({"stage": stage, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}))
        else:
            print(lines[-1][len("RESULT "):])
        sys.stdout.flush()


if __name__ == "__main__":
    main()
