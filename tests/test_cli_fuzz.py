"""Hostile command lines: any sequence of arguments ends in a result (exit 0), a documented error
("error: ..." on stderr, exit 2) or argparse's usage message (exit 2), never in a traceback.

Arguments are drawn from the words of the command line (subcommands, options, values) and from
hostile ones (paths to damaged, foreign or code-running files, NUL bytes, traversal, huge or
non-finite numbers). A study or audit that passes every check would start computing: it is
stopped there, at the call of ``run_study``, and counted as "would run".
"""

from __future__ import annotations

import contextlib
import io
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from medrobust.cli import main
from tests import fuzz
from tests.conftest import REAL_DATA
from tests.study.conftest import small_config

FILES = tempfile.TemporaryDirectory(prefix="medrobust-cli-fuzz-")
ROOT = Path(FILES.name)


def _files() -> dict[str, Path]:
    """Files the arguments can name: valid, damaged, foreign, hostile."""
    files = {
        "good.yaml": yaml.safe_dump(small_config(trials=1)),
        "bad.toml": "[study\ntrials = ",
        "code.yaml": 'study: !!python/object/apply:os.system ["touch pwned"]\n',
        "huge.yaml": yaml.safe_dump(small_config(trials=10**9)),
        "notes.txt": "not a store",
        "latin1.yaml": "study: {name: caf\xe9}\n",
    }
    paths = {}
    for name, text in files.items():
        path = ROOT / name
        path.write_bytes(text.encode("latin-1") if name == "latin1.yaml" else text.encode())
        paths[name] = path
    foreign = ROOT / "foreign.sqlite"
    with contextlib.closing(sqlite3.connect(foreign)) as conn:
        conn.execute("CREATE TABLE patients (id INTEGER)")
    paths["foreign.sqlite"] = foreign
    folder = ROOT / "folder"
    folder.mkdir()
    paths["folder"] = folder
    paths["checkpoint.pt"] = ROOT / "checkpoint.pt"
    paths["checkpoint.pt"].write_bytes(b"\x80\x04not a state dict")
    paths["data.npz"] = ROOT / "data.npz"
    paths["data.npz"].write_bytes(b"PK\x03\x04 truncated")
    return paths


PATHS = _files()
WORDS = [
    "tasks",
    "study",
    "report",
    "audit",
    "show",
    "--version",
    "-v",
    "--help",
    "bogus",
    "--output",
    "--quiet",
    "--seed",
    "--executor",
    "ray",
    "local",
    "--address",
    "--model",
    "--task",
    "--data",
    "--arch",
    "--checkpoint",
    "--attack",
    "--eps",
    "--norm",
    "--defense",
    "--trials",
    "--epochs",
    "--lr",
    "--param",
    "--modality",
    "--classes",
    "--positive",
    "--domain",
    "--label",
    "--train",
    "--device",
    "--max-attack-examples",
    "wisconsin",
    "breastmnist",
    "nope",
    "medmnist:nosuchset",
    "file:/no/such.npz",
    "mlp",
    "small_cnn",
    "fgsm",
    "pgd:steps=3",
    "pgd:steps=x",
    "pgd:=3",
    "jsma:gamma=nan",
    "randomized_smoothing:sigma=-1",
    "python:os:system",
    "python:/no/such.py:factory",
    "huggingface:/no/dir",
    "0",
    "-1",
    "3",
    "0.1",
    "nan",
    "inf",
    "1e999",
    "99999999999999999999",
    "l9",
    "linf",
    "cuda:7",
    "image",
    "a=b",
    "1,0",
    ",",
    "",
    "\x00",
    "../../etc/passwd",
    "caf\xe9 \u202e\U0001f489",
    *(str(path) for path in PATHS.values()),
    str(ROOT / "missing.toml"),
    str(ROOT / "out"),
]


FILE_WORDS = [*(str(path) for path in PATHS.values()), str(ROOT / "missing.toml")]
VALUE_WORDS = [w for w in WORDS if not w.startswith("-")]
# The options of each subcommand with the values drawn for them (None: a flag).
OPTIONS: dict[str, dict[str, list[str] | None]] = {
    "tasks": {"--seed": ["0", "-1", "3", "x", "1e999"]},
    "study": {
        "--output": [str(ROOT / "out"), "", "\x00", "../../etc/passwd", str(PATHS["notes.txt"])],
        "--quiet": None,
        "--executor": ["local", "ray", "dask", ""],
        "--address": ["auto", "", "127.0.0.1:1", "\x00"],
    },
    "report": {"--output": [str(ROOT / "report"), "\x00", str(PATHS["notes.txt"])]},
    "audit": {
        "--model": [
            "python:os:system",
            "python:/no/such.py:factory",
            "huggingface:/no/dir",
            "mlp",
            str(PATHS["checkpoint.pt"]),
            "",
        ],
        "--checkpoint": FILE_WORDS,
        "--arch": ["mlp", "small_cnn", "nope", ""],
        "--param": ["a=b", "width=-2", "=", "width=nan"],
        "--label": ["<script>alert(1)</script>", "", "\x1b[2J"],
        "--train": None,
        "--task": ["wisconsin", "breastmnist", "nope", "medmnist:nosuchset", "file:/no/such.npz"],
        "--data": [*FILE_WORDS, "file:/no.npz"],
        "--modality": ["image", "ecg", "tabular", "text", "audio"],
        "--classes": ["a,b", ",", ""],
        "--positive": ["0", "9", "benign", ""],
        "--domain": ["0,1", "1,0", "nan,1", "x"],
        "--attack": ["fgsm", "pgd:steps=3", "pgd:steps=x", "pgd:=3", "jsma:gamma=nan", "nope"],
        "--eps": ["0.1", "-1", "nan", "inf", "1e999"],
        "--norm": ["linf", "l2", "l9"],
        "--defense": ["randomized_smoothing:sigma=-1", "randomized_smoothing:sigma=0.1", "x"],
        "--epochs": ["0", "-1", "2", "x"],
        "--lr": ["0", "nan", "-1", "0.01"],
        "--trials": ["0", "-1", "2", "99999999999999999999"],
        "--seed": ["0", "-1"],
        "--max-attack-examples": ["0", "5", "-3"],
        "--device": ["cpu", "cuda:7", "tpu"],
        "--output": [str(ROOT / "audit"), "\x00"],
        "--quiet": None,
    },
}


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    """A subcommand, its positional argument (sometimes), its options with drawn values, and
    now and then a stray word anywhere."""
    command = draw(st.sampled_from(sorted(OPTIONS)))
    argv = [command]
    if command in ("study", "report") and draw(st.booleans()):
        argv.append(draw(st.sampled_from(FILE_WORDS + VALUE_WORDS[:5])))
    if command == "tasks" and draw(st.booleans()):
        argv += ["show", draw(st.sampled_from(["wisconsin", "breastmnist", "nope", ""]))]
    options = OPTIONS[command]
    if command == "audit" and draw(st.integers(0, 4)) > 0:  # mostly with its required options
        where = draw(st.sampled_from(["--task", "--data"]))
        argv += ["--model", draw(st.sampled_from(options["--model"] or []))]
        argv += [where, draw(st.sampled_from(options[where] or []))]
    for name in draw(st.lists(st.sampled_from(sorted(options)), max_size=7)):
        values = options[name]
        argv.append(name)
        if values is not None:
            argv.append(draw(st.sampled_from(values)))
    if draw(st.integers(0, 9)) == 0:
        argv.insert(draw(st.integers(0, len(argv))), draw(st.sampled_from(WORDS)))
    return argv


class WouldRun(Exception):
    """Raised where a command that passed every check would start computing."""


def _would_run(*args: object, **kwargs: object) -> None:
    raise WouldRun


@contextlib.contextmanager
def _environment() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("medrobust.study.run_study", _would_run)
        patch.setattr("medrobust.auditing.run_study", _would_run)
        if REAL_DATA is not None:
            patch.setenv("MEDROBUST_DATA", str(REAL_DATA))
        patch.setenv("MEDROBUST_CACHE", str(ROOT / "cache"))
        patch.setenv("MEDROBUST_OFFLINE", "1")
        patch.chdir(ROOT)
        yield


def run_cli(argv: list[str]) -> tuple[str, int, str]:
    """(outcome class, exit status, stderr) of ``medrobust ARGV``."""
    out, err = io.StringIO(), io.StringIO()
    with _environment(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(argv)
            kind = "exit 0" if status == 0 else f"error (exit {status})"
        except SystemExit as exc:  # argparse: usage errors, --help, --version
            status = exc.code if isinstance(exc.code, int) else 2
            kind = "help or version (exit 0)" if status == 0 else "usage error (exit 2)"
        except WouldRun:
            status, kind = 0, "would run"
    return kind, status, err.getvalue()


@settings(max_examples=600)
@given(
    argv=st.one_of(command_lines(), command_lines(), st.lists(st.sampled_from(WORDS), max_size=8))
)
def test_any_command_line_ends_in_a_result_or_a_documented_error(argv: list[str]) -> None:
    kind, status, err = run_cli(argv)
    fuzz.record("command-line arguments", kind)
    assert "Traceback" not in err
    assert status in (0, 2), f"{argv}: exit {status}\n{err}"
    if kind.startswith("error"):
        assert err.startswith("error: ") and len(err) > len("error: \n"), err
    if kind.startswith("usage"):
        assert "usage: medrobust" in err
    assert not (ROOT / "pwned").exists()  # no config ran code


@pytest.mark.parametrize(
    ("argv", "kind", "message"),
    [
        (["study", str(PATHS["code.yaml"])], "error (exit 2)", "cannot be parsed"),
        (["study", str(PATHS["huge.yaml"])], "error (exit 2)", "more than the limit"),
        (["study", str(PATHS["latin1.yaml"])], "error (exit 2)", "cannot be parsed"),
        (["report", str(PATHS["foreign.sqlite"])], "error (exit 2)", "not a medrobust results"),
        (["report", str(PATHS["notes.txt"])], "error (exit 2)", "corrupt or not a SQLite"),
        (["study", str(PATHS["good.yaml"]), "--output", "out"], "would run", ""),
    ],
)
def test_hostile_files_on_the_command_line(argv: list[str], kind: str, message: str) -> None:
    got, _, err = run_cli(argv)
    assert (got, message in err) == (kind, True), err
    assert PATHS["foreign.sqlite"].stat().st_size > 0  # a foreign file is left as it was
