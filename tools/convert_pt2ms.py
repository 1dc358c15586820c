#!/usr/bin/env python
"""Convert a PyTorch MVDream checkpoint (.pt/.pth) to MindSpore .ckpt or .safetensors.

    python tools/convert_pt2ms.py --src sd-v2.1-base-4view.pt --trgt sd-v2.1-base-4view.ckpt

The output format follows the extension of --trgt. Key names are kept as they
are (the port's cells use PyTorch parameter names), so the result loads with
``mvdream.model_zoo.build_model(..., ckpt_path=...)`` like the .pt does. No torch
is needed: tensors are rebuilt from the zip's raw storages by an allow-list
unpickler. The output is written atomically; on any error (full disk, Ctrl-C,
SIGTERM) nothing is left behind, one ``error:`` line is printed and the exit code
is 1 (130/143 for a signal). An existing --trgt is only replaced with --overwrite.
"""
import argparse
import os
import signal
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


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"error: {message}; see --help\n")


def parse_args(argv=None):
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", required=True, help="input checkpoint (.pt/.pth; .ckpt/.safetensors also accepted)")
    parser.add_argument("--trgt", required=True, help=f"output file ({' or '.join(WRITE_SUFFIXES)})")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --trgt")
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    return parser.parse_args(argv)


def check_target(src, trgt, overwrite=False):
    """Everything about --trgt that can be checked before reading a multi-GB input."""
    if os.path.abspath(src) == os.path.abspath(trgt):
        raise CheckpointError(f"{trgt}: output would overwrite the input; choose another --trgt")
    check_suffix(trgt, WRITE_SUFFIXES, "write")
    if os.path.isdir(trgt):
        raise CheckpointError(f"{trgt} is a directory; give a file name for --trgt")
    if os.path.lexists(trgt) and not overwrite:
        raise CheckpointError(f"{trgt} exists; pass --overwrite to replace it")
    directory = os.path.dirname(os.path.abspath(trgt))
    if not os.path.isdir(directory):
        raise CheckpointError(f"{trgt}: output directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise CheckpointError(f"{trgt}: output directory {directory} is not writable")


def read_source(src, trgt, progress=True, overwrite=False):
    """The state dict of ``src``, once everything about ``trgt`` checks out (no MindSpore needed)."""
    check_target(src, trgt, overwrite)  # fail before reading a multi-GB input
    return load_checkpoint_file(src, progress=progress)


def write_target(state_dict, trgt):
    """Write ``state_dict`` to ``trgt``; return the summary tuple (tensors, values, bytes)."""
    try:
        save_state_dict(state_dict, trgt)
    except OSError as err:  # e.g. a virtual filesystem that refuses new files
        raise CheckpointError(f"{trgt}: could not write the checkpoint ({err.strerror or err})") from None
    return summarize_state_dict(state_dict)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(signum)


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM cleans up like Ctrl-C
    try:
        state_dict = read_source(args.src, args.trgt, progress=not args.no_progress, overwrite=args.overwrite)
        setup_runtime("CPU")  # MindSpore (seconds to import) only once there is something to write
        tensors, values, nbytes = write_target(state_dict, args.trgt)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        signum = err.args[0] if err.args else signal.SIGINT
        print(f"error: interrupted by {signal.Signals(signum).name}; {args.trgt} was not written", file=sys.stderr)
        return 128 + int(signum)
    print(f"converted {args.src} -> {args.trgt}: {tensors} tensors, {values:,} values, "
          f"{_human_bytes(nbytes)} ({nbytes:,} bytes) in {time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
