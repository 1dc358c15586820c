"""Multiview previews in the browser: ``python scripts/gradio_app.py`` (then open the printed URL).

The original MVDream demo's flags and inputs, served offline on 127.0.0.1. The images come from
the same sampler as ``scripts/t2i.py`` (``mvdream.t2i.sample_previews``): same seed and settings,
same pixels. The grid and every view are written under --output_dir and offered for download.
"""
import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name", type=str, default="sd-v2.1-base-4view", help="pretrained model name")
    parser.add_argument("--config_path", type=str, default=None, help="local model config (with --ckpt_path)")
    parser.add_argument("--ckpt_path", type=str, default=None, help="local checkpoint (.pt/.pth/.ckpt/.safetensors)")
    parser.add_argument("--cache_dir", type=str, default=None, help="Hugging Face cache directory")
    parser.add_argument("--suffix", type=str, default=", 3d asset")
    parser.add_argument("--num_frames", type=int, default=4, help="views per object")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--fp16", action="store_true", help="run UNet and VAE in float16")
    parser.add_argument("--device_target", type=str, default=None, choices=["CPU", "Ascend", "GPU"],
                        help="MindSpore device (default: the best present: Ascend, then GPU, then CPU)")
    parser.add_argument("--output_dir", type=str, default="outputs/previews",
                        help="where the grids and views are written (default outputs/previews)")
    from mvdream.webapp import add_server_args

    return add_server_args(parser)


class PreviewModel:
    """The model, loaded once in the background; ``get()`` waits for it or raises its one-line error."""

    def __init__(self, args):
        self.args = args
        self.ready = threading.Event()
        self.model = self.sampler = None
        self.error = None
        self.lock = threading.Lock()  # one sampling at a time

    def load(self):
        import mindspore as ms

        from mvdream.errors import user_facing_errors
        from mvdream.ldm.models.diffusion.ddim import DDIMSampler
        from mvdream.model_zoo import build_model

        args = self.args
        try:
            model = build_model(args.model_name, ckpt_path=args.ckpt_path, cache_dir=args.cache_dir,
                                config_path=args.config_path, weights_dtype=ms.float16 if args.fp16 else None)
            model.set_train(False)
            self.model, self.sampler = model, DDIMSampler(model)
        except user_facing_errors() as err:
            self.error = f"error: {err}"
        finally:
            self.ready.set()

    def status(self):
        if not self.ready.is_set():
            return "loading the model ..."
        return self.error or f"model ready ({self.args.ckpt_path or self.args.model_name})"

    def get(self):
        self.ready.wait()
        if self.error:
            raise RuntimeError(self.error)
        return self.model, self.sampler


def save_previews(rows, output_dir, seed):
    """Grid + one PNG per view in a new folder under ``output_dir`` (renamed into place when
    complete, so a half-written set is never offered). Returns (grid path, [all paths])."""
    from PIL import Image

    from mvdream.t2i import preview_grid

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    partial = Path(tempfile.mkdtemp(prefix=f".partial-{stamp}-", dir=output_dir))
    Image.fromarray(preview_grid(rows)).save(partial / "grid.png")
    for r, images in enumerate(rows):
        for v, image in enumerate(images):
            Image.fromarray(image).save(partial / f"r{r}_v{v}.png")
    final = Path(tempfile.mkdtemp(prefix=f"{stamp}-seed{seed}-", dir=output_dir))
    os.replace(partial, final)  # replaces the empty placeholder directory
    names = ["grid.png"] + [f"r{r}_v{v}.png" for r in range(len(rows)) for v in range(len(rows[r]))]
    return final / "grid.png", [final / n for n in names]


def generate(holder, args, prompt, negative_prompt, seed, guidance_scale, steps, elevation, azimuth,
             use_camera, rows, progress):
    """One click of Generate: returns (grid path, download paths, message line)."""
    prompt = (prompt or "").strip()
    if not prompt:
        return None, None, "error: the prompt is empty; type what the object should be"
    try:
        seed, steps, rows = int(seed), int(steps), int(rows)
    except (TypeError, ValueError):
        return None, None, "error: seed, sample steps and rows must be whole numbers"
    if not 1 <= steps <= 1000:
        return None, None, f"error: sample steps must be in 1..1000, got {steps}"
    if not 1 <= rows <= 8:
        return None, None, f"error: rows must be in 1..8, got {rows}"
    try:
        model, sampler = holder.get()
    except RuntimeError as err:
        return None, None, str(err)
    from mvdream.t2i import sample_previews

    def on_step(done, total):
        progress((done, total), desc="DDIM steps")

    t0 = time.time()
    with holder.lock:
        images = sample_previews(model, sampler, prompt + args.suffix, negative_prompt or "", args.size,
                                 args.num_frames, bool(use_camera), float(elevation), float(azimuth), 360.0,
                                 seed, steps, float(guidance_scale), rows, callback=on_step)
    grid, files = save_previews(images, args.output_dir, seed)
    return str(grid), [str(f) for f in files], f"done in {time.time() - t0:.1f} s: {grid}"


def build_demo(gr, holder, args):
    examples = ["an astronaut riding a horse", "an earth", "a statue of a cute cat",
                "Luffy from one piece, head, super detailed, best quality, 4K, HD"]
    with gr.Blocks(title="MVDream multiview previews", analytics_enabled=False) as demo:
        gr.Markdown("## MVDream: multiview images from text and camera inputs")
        status = gr.Markdown(holder.status(), elem_id="status")  # the model's state, refreshed
        message = gr.Markdown("", elem_id="message")  # the answer to the last Generate
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(value="", label="prompt", elem_id="prompt",
                                    placeholder="an astronaut riding a horse")
                negative = gr.Textbox(value="", label="negative prompt", elem_id="negative_prompt")
                seed = gr.Number(value=23, label="seed", precision=0, elem_id="seed")
                scale = gr.Number(value=7.5, label="guidance scale", elem_id="guidance_scale")
                steps = gr.Number(value=25, label="sample steps", precision=0, elem_id="steps")
                elevation = gr.Slider(0, 30, value=15, label="elevation", info="0 to 30 degrees")
                azimuth = gr.Slider(0, 360, value=0, label="azimuth", info="0 to 360 degrees")
                use_camera = gr.Checkbox(value=True, label="multi-view mode",
                                         info="one object seen from several cameras (off: independent images)")
                rows = gr.Slider(1, 8, value=2, step=1, label="rows", info="row r uses seed + r")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                image = gr.Image(label="views (rows x cameras)", type="filepath", format="png", height=320,
                                 interactive=False, elem_id="grid")
                files = gr.File(label="download: grid and each view", file_count="multiple",
                                interactive=False, elem_id="downloads")
        gr.Examples([[e] for e in examples], [prompt])
        inputs = [prompt, negative, seed, scale, steps, elevation, azimuth, use_camera, rows]

        def on_generate(*values, progress=gr.Progress()):
            return generate(holder, args, *values, progress=progress)

        button.click(on_generate, inputs=inputs, outputs=[image, files, message], concurrency_limit=1)
        prompt.submit(on_generate, inputs=inputs, outputs=[image, files, message], concurrency_limit=1)
        gr.Timer(2.0).tick(holder.status, outputs=status, show_progress="hidden")
    return demo


def main(argv=None):
    args = build_parser().parse_args(argv)
    from mvdream.model_zoo import load_model_config
    from mvdream.t2i import latent_downsampling_factor
    from mvdream.webapp import launch, offline_environment

    if args.num_frames < 1:
        raise ValueError(f"--num_frames must be >= 1, got {args.num_frames}")
    if args.config_path is not None and args.ckpt_path is None:
        raise ValueError("--config_path needs --ckpt_path (the weights that fit that config)")
    factor = latent_downsampling_factor(load_model_config(args.model_name, args.config_path))
    if args.size <= 0 or args.size % factor:
        raise ValueError(f"--size must be a positive multiple of {factor} for this model, got {args.size}")
    args.output_dir = str(Path(args.output_dir).resolve())
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)

    offline_environment()
    from mvdream.runtime import setup_runtime

    setup_runtime(args.device_target, report=print)
    holder = PreviewModel(args)
    threading.Thread(target=holder.load, name="load-model", daemon=True).start()
    import gradio as gr

    demo = build_demo(gr, holder, args).queue(default_concurrency_limit=1)
    # small previews are scaled up to the box, pixels kept sharp
    css = "#grid img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }"
    launch(demo, gr, args, allowed_paths=[args.output_dir], title="MVDream previews", css=css)


def cli():
    from mvdream.errors import user_facing_errors

    try:
        main()
    except (ValueError, OSError) + user_facing_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    cli()
