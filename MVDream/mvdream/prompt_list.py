"""Prompt lists (``--prompts_file``): one job per distinct prompt, shared by ranks, resumable.

* ``read_prompts``: one prompt per line; blank lines and lines starting with ``#`` are skipped;
  a prompt given twice runs once (on purpose: its outputs would be identical).
* Ranks share the list without talking to each other: rank r of N takes prompts r, r + N, ...
* ``PromptListState``: a JSON record per prompt in ``<list directory>/status/``, written
  atomically by the rank that runs it (status ``running`` / ``done`` / ``failed``, output,
  seconds, error), and ``summary.tsv`` (prompt, status, output, seconds, error) rebuilt from
  all records after every prompt, so the last rank to finish leaves the complete table.
* ``run_prompt_list``: runs this rank's prompts that are not ``done`` (so re-running a list
  after an interruption finishes only the rest); a failing prompt is recorded, the others go on.
"""
import csv
import hashlib
import io
import json
import logging
import os
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .ranks import Ranks

SUMMARY = "summary.tsv"
COLUMNS = ("prompt", "status", "output", "seconds", "error")


class PromptListError(ValueError):
    """A prompts file that cannot be used; reported as one line."""


def read_prompts(path) -> Tuple[List[str], List[str]]:
    """(distinct prompts in file order, prompts that were given more than once)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PromptListError(f"--prompts_file {path} does not exist; give a text file with one prompt per line") from None
    except UnicodeDecodeError:
        raise PromptListError(f"--prompts_file {path} is not UTF-8 text; save it as UTF-8, one prompt per line") from None
    except OSError as err:
        raise PromptListError(f"--prompts_file {path} cannot be read ({err.strerror}); "
                              "give a readable text file with one prompt per line") from None
    prompts = [line.strip() for line in text.splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise PromptListError(f"--prompts_file {path} has no prompts; write one prompt per line "
                              "(blank lines and lines starting with # are skipped)")
    distinct = list(dict.fromkeys(prompts))
    duplicates = [p for p in distinct if prompts.count(p) > 1]
    return distinct, duplicates


def rank_share(prompts: Sequence[str], ranks: Ranks) -> List[str]:
    """This rank's prompts: every ``world``-th one from index ``rank``."""
    return list(prompts[ranks.rank::ranks.world])


def prompt_key(prompt: str) -> str:
    return hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:16]


def _write_atomic(path: Path, text: str):
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class PromptListState:
    """Status records and summary of one prompt list in ``directory``."""

    def __init__(self, directory):
        self.directory = Path(directory)

    def _path(self, prompt: str) -> Path:
        return self.directory / "status" / f"{prompt_key(prompt)}.json"

    def get(self, prompt: str) -> Optional[Dict]:
        try:
            record = json.loads(self._path(prompt).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record if record.get("prompt") == prompt else None

    def put(self, prompt: str, **fields) -> Dict:
        self._path(prompt).parent.mkdir(parents=True, exist_ok=True)
        record = {"prompt": prompt, **fields}
        _write_atomic(self._path(prompt), json.dumps(record, indent=1))
        return record

    def is_done(self, prompt: str) -> bool:
        record = self.get(prompt)
        return record is not None and record.get("status") == "done"

    def write_summary(self, prompts: Sequence[str]) -> Path:
        """``summary.tsv`` of ``prompts`` in list order (``pending``: no record yet)."""
        buf = io.StringIO()
        writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
        writer.writerow(COLUMNS)
        for prompt in prompts:
            record = self.get(prompt) or {"status": "pending"}
            writer.writerow([prompt] + [record.get(c, "") for c in COLUMNS[1:]])
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / SUMMARY
        _write_atomic(path, buf.getvalue())
        return path


def read_summary(path) -> List[Dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def one_line(err: BaseException) -> str:
    message = str(err.args[0] if isinstance(err, KeyError) and err.args else err).strip()
    first = message.splitlines()[0] if message else ""
    return first if isinstance(err, ValueError) and first else f"{type(err).__name__}: {first}".rstrip(": ")


def run_prompt_list(prompts: Sequence[str], ranks: Ranks, state: PromptListState,
                    run_one: Callable[[str], str], logger: logging.Logger,
                    known_errors: Tuple[type, ...] = (Exception,)) -> List[Dict]:
    """Run ``run_one(prompt) -> output path`` for this rank's prompts that are not done yet.
    Errors of type ``known_errors`` are recorded (first line) and the next prompt starts;
    anything else propagates. Returns the records of this rank's prompts."""
    mine = rank_share(prompts, ranks)
    todo = [p for p in mine if not state.is_done(p)]
    logger.info("%s: %d of %d prompts are this rank's, %d already done", ranks, len(mine), len(prompts),
                len(mine) - len(todo))
    records = [state.get(p) for p in mine if p not in todo]
    for i, prompt in enumerate(todo):
        logger.info("prompt %d/%d of %s: %s", i + 1, len(todo), ranks, prompt)
        state.put(prompt, status="running", output="", seconds="", error="", rank=ranks.rank)
        start = time.time()
        try:
            output, status, error = run_one(prompt), "done", ""
        except known_errors as err:
            output, status, error = "", "failed", one_line(err)
            logger.error("prompt %r failed: %s", prompt, error)
        records.append(state.put(prompt, status=status, output=str(output or ""),
                                 seconds=round(time.time() - start, 1), error=error, rank=ranks.rank))
        state.write_summary(prompts)
    state.write_summary(prompts)
    return records


def list_outcome(records: Sequence[Dict], ranks: Ranks, summary: Path) -> Tuple[int, Optional[str]]:
    """(exit code, message) of a rank after its share: 1 and an error line when one of its
    prompts failed, except under msrun with several ranks, where the rank exits 0 (msrun stops
    every other rank as soon as one exits non-zero) and the message is a warning."""
    failed = [r for r in records if r.get("status") != "done"]
    if not failed:
        return 0, None
    message = f"{len(failed)} of {len(records)} prompts of {ranks} failed; see {summary}"
    return (0, message) if ranks.world > 1 else (1, message)
