"""Output folders of runs: a run never overwrites another run's results by accident, and a resumed
run has the options of the run it continues.

Every run writes ``run.json`` (command, options, status) into its folder first.  A folder that is not
empty is refused unless the run resumes it (same command and options, else the differences are
named) or the caller asks to overwrite it (only an edgeguard run folder is ever deleted)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..errors import OutputExistsError, UsageError
from .atomic import atomic_path

RUN_FILE = "run.json"
FORMAT = "edgeguard.run/1"


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(options, default=str, sort_keys=True))


def prepare_run_dir(
    out: str | Path,
    command: str,
    options: dict[str, Any],
    resume: bool = False,
    overwrite: bool = False,
    resumable: bool = True,
    inputs: tuple[str | Path | None, ...] = (),
) -> Path:
    """Make ``out`` ready for a run of ``command`` with ``options`` (what defines its results).

    ``resumable``: whether the command can resume (the message offers ``--resume`` only then).
    ``inputs``: files the run reads; overwriting a folder that holds one of them is refused.
    Raises :class:`OutputExistsError` for a non-empty folder without ``resume``/``overwrite``, and
    :class:`UsageError` for a path that is a file, a folder that is not an edgeguard run, or a resume
    with other options (each differing option is named).  Returns the folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"output {out} is a file; give a folder (new or empty) for the results")
    if resume and overwrite:
        raise UsageError("give at most one of --resume and --overwrite")
    options = _jsonable(options)
    record = out / RUN_FILE
    busy = out.is_dir() and any(out.iterdir())
    if busy and resume:
        stored = _read(record)
        if stored.get("command") != command:
            raise UsageError(
                f"cannot resume {out}: it holds a {stored.get('command')!r} run, not {command!r}"
            )
        old = stored.get("options", {})
        diff = [
            f"{k}: stored {old.get(k)!r}, given {options.get(k)!r}"
            for k in sorted(set(old) | set(options))
            if old.get(k) != options.get(k)
        ]
        if diff:
            raise UsageError(
                f"cannot resume {out} with other options ({'; '.join(diff)}); "
                "repeat the stored options or use another --out"
            )
        return out
    if busy and overwrite:
        if not record.is_file():
            raise UsageError(
                f"refusing to overwrite {out}: it is not an edgeguard run folder (no "
                f"{RUN_FILE}); choose a new or empty folder"
            )
        for item in inputs:
            if item is not None and Path(item).resolve().is_relative_to(out.resolve()):
                raise UsageError(
                    f"{item} lies inside --out {out}, which --overwrite would delete; "
                    "give another --out"
                )
        shutil.rmtree(out)
    elif busy:
        resume_hint = "--resume to continue the run in it, " if resumable else ""
        raise OutputExistsError(
            f"output folder {out} is not empty; pass {resume_hint}--overwrite "
            "to replace it, or give another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    _write(record, {"format": FORMAT, "command": command, "options": options, "status": "running"})
    return out


def finish_run(out: str | Path) -> None:
    """Mark the run in ``out`` finished (after its results are written)."""
    record = Path(out) / RUN_FILE
    state = _read(record)
    state["status"] = "finished"
    _write(record, state)


def _read(record: Path) -> dict[str, Any]:
    if not record.is_file():
        raise UsageError(
            f"cannot resume {record.parent}: it holds no {RUN_FILE}, so it is not an "
            "edgeguard run folder"
        )
    try:
        state = json.loads(record.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{record} is not valid JSON ({err})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UsageError(f"{record} is not an edgeguard run record (format {FORMAT!r})")
    return state


def _write(record: Path, state: dict[str, Any]) -> None:
    with atomic_path(record) as tmp:
        tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
