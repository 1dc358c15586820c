#!/usr/bin/env python
"""Convert a PyTorch MVDream checkpoint (.pt/.pth) to MindSpore .ckpt or .safetensors.

    python tools/convert_pt2ms.py --src sd-v2.1-base-4view.pt --trgt sd-v2.1-base-4view.ckpt

The output format follows the extension of --trgt. Key names are kept as they
are (the port's cells use PyTorch parameter names), so the result loads with
``mvdream.model_zoo.build_model(..., ckpt_path=...)`` like the .pt does. No torch
is needed: tensors are rebuilt from the zip's raw storages by an allow-list
unpickler. The output is written atomically; on any error nothing is left behind
and the exit code is 1.
"""
import argparse
import os
import sys
import time

from mvdream.checkpoint import (CheckpointError, load_checkpoint_file, save_state_dict,  # noqa: E402
                                summarize_state_dict)
from mvdream.checkpoint.files import WRITE_SUFFIXES, check_suffix  # noqa: E402
from mvdream.runtime import setup_runtime  # noqa: E402


def _human_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024.0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", required=True, help="input checkpoint (.pt/.pth; .ckpt/.safetensors also accepted)")
    parser.add_argument("--trgt", required=True, help=f"output file ({' or '.join(WRITE_SUFFIXES)})")
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    return parser.parse_args(argv)


def convert(src, trgt, progress=True):
    """Read ``src``, write ``trgt``; return the summary tuple (tensors, values, bytes)."""
    if os.path.abspath(src) == os.path.abspath(trgt):
        raise CheckpointError(f"{trgt}: output would overwrite the input; choose another --trgt")
    check_suffix(trgt, WRITE_SUFFIXES, "write")  # fail before reading a multi-GB input
    state_dict = load_checkpoint_file(src, progress=progress)
    save_state_dict(state_dict, trgt)
    return summarize_state_dict(state_dict)


def main(argv=None):
    args = parse_args(argv)
    setup_runtime("CPU")
    start = time.time()
    try:
        tensors, values, nbytes = convert(args.src, args.trgt, progress=not args.no_progress)
    except CheckpointError as err:
        print(f"CheckpointError: {err}", file=sys.stderr)
        return 1
    print(f"converted {args.src} -> {args.trgt}: {tensors} tensors, {values:,} values, "
          f"{_human_bytes(nbytes)} ({nbytes:,} bytes) in {time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
