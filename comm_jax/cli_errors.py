"""How the programs fail: a known problem (bad flag or config key, missing file, full disk, unreadable data)
becomes one line on stderr naming what to fix and a non-zero exit code; `--verbose` shows the traceback."""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
import threading
from typing import Callable, Iterable, Iterator, Sequence

RUN_ERROR = 1     # the run stopped on its files, data or numbers
USAGE_ERROR = 2   # the command line or the config is wrong

_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "File too large")


class ProgramError(Exception):
    """An error whose message is the whole line to show: what is wrong and what to do."""

    exit_code = RUN_ERROR


class UsageError(ProgramError):
    """The command line or the config cannot run."""

    exit_code = USAGE_ERROR


def _chain(error: BaseException) -> list[BaseException]:
    found = []
    while error is not None and error not in found:
        found.append(error)
        error = error.__cause__ or error.__context__
    return found


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    while len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":     # KeyError's repr quoting
        text = text[1:-1]
    return text.splitlines()[0] if text else type(error).__name__


def committed_steps(workdir: str) -> list[int]:
    """Steps with a committed checkpoint under `workdir/checkpoints` (Orbax renames a step's folder to its
    number only once it is complete)."""
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def _disk_full(chain: Sequence[BaseException]) -> BaseException | None:
    for error in chain:
        if isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS:
            return error
        if any(text in str(error) for text in _DISK_FULL_TEXT):
            return error
    return None


def _written_path(error: BaseException) -> str | None:
    if isinstance(error, OSError) and error.filename:
        return str(error.filename)
    found = re.search(r'(?:writing|file) "?(/[^"\s:]+)', str(error))
    return found.group(1) if found else None


def describe(error: BaseException, workdir: str | None = None) -> tuple[str, int]:
    """(the line to print, the exit code) for an exception that ended a program."""
    chain = _chain(error)
    if isinstance(error, ProgramError):
        return _first_line(error), error.exit_code
    full = _disk_full(chain)
    if full is not None:
        where = _written_path(full) or workdir or "the output directory"
        reason = full.strerror if isinstance(full, OSError) and full.strerror else "no space left on device"
        resume = ""
        if workdir:
            steps = committed_steps(workdir)
            resume = (f", then run the same command again: it resumes from step {steps[-1]}" if steps
                      else ", then run the same command again")
        return f"cannot write {where}: {reason}; free space on that disk{resume}", RUN_ERROR
    for link in chain:
        if isinstance(link, (PermissionError, NotADirectoryError, IsADirectoryError)) or (
                isinstance(link, OSError) and link.errno == errno.EROFS):
            return (f"cannot write {link.filename}: {link.strerror}; choose a --workdir this user can "
                    f"write to", USAGE_ERROR)
    if isinstance(error, FileNotFoundError) and error.filename:
        return f"{error.filename}: {error.strerror}", RUN_ERROR
    if isinstance(error, (ValueError, RuntimeError, FileNotFoundError)):
        return _first_line(error), RUN_ERROR
    return f"{type(error).__name__}: {_first_line(error)} (run with --verbose for the traceback)", RUN_ERROR


def _override_error(argv: Sequence[str], error: BaseException) -> UsageError:
    """An unknown `--config.a.b=value` key, named as the user typed it."""
    missing = next((_first_line(e) for e in _chain(error) if isinstance(e, (KeyError, AttributeError))), "")
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        path = arg[len("--config."):].split("=", 1)[0]
        if missing and missing in path.split("."):
            return UsageError(f"unknown config key {path!r} in {arg}: the config has no such key "
                              f"(check the spelling against the config file)")
    return UsageError(f"cannot apply the config overrides: {_first_line(error)}")


def parse_flags(argv: Sequence[str]) -> list[str]:
    """absl flag parsing where every failure is a UsageError naming the flag or config key."""
    from absl import flags
    try:
        return flags.FLAGS(list(argv))
    except flags.Error as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        if any(line.startswith("Traceback") for line in lines):   # a config file's get_config raised
            lines = [lines[0], lines[-1]]
        text = " ".join(lines)
        raise UsageError(text) from error
    except (KeyError, AttributeError) as error:
        raise _override_error(argv, error) from error
    except (OSError, ImportError, SyntaxError) as error:     # the config file (loaded while parsing)
        raise config_file_error(argv, error) from error


def config_file_error(argv: Sequence[str], error: BaseException, name: str = "config") -> UsageError:
    """A UsageError naming the config file that cannot be loaded, and why."""
    given = next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")), "")
    path = given.split(":", 1)[0]
    inner = _chain(error)[-1]
    if isinstance(inner, FileNotFoundError) or (path and not os.path.exists(path)):
        return UsageError(f"config file {path!r} does not exist (--{name}={given})")
    return UsageError(f"config file {path!r} cannot be loaded: {type(inner).__name__}: {_first_line(inner)}")


def loaded_config(name: str = "config"):
    """The value of a config-file flag, or a UsageError naming the file when it cannot be loaded."""
    from absl import flags
    try:
        value = flags.FLAGS[name].value
        list(value.keys())      # a file that failed to load gives a placeholder that raises on use
        return value
    except (OSError, ImportError, SyntaxError, ValueError, KeyError, AttributeError, TypeError) as error:
        raise config_file_error(sys.argv, error, name) from error


class _HideOrbaxErrors(logging.Filter):
    """Orbax logs a traceback per failed background write; the program reports the failure once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and f"{os.sep}orbax{os.sep}" in record.pathname)


class _StderrFilter:
    """Passes everything written to file descriptor 2 through, except: once `RuntimeError: Event loop is
    closed` appears (the checkpoint writer's native callbacks print one traceback per pending write after a
    failed save, e.g. a full disk, from several threads whose lines interleave), every traceback-shaped line
    after it (indented, blank, a traceback header or the noise itself), and the traceback held when it
    appeared; TensorFlow's start-up notices,
    which its C++ logging prints whatever `TF_CPP_MIN_LOG_LEVEL` says; and its runtime's echo of an input
    error ("Local rendezvous is aborting with status ...") that the error line reports."""

    NOISE = b"RuntimeError: Event loop is closed"
    STARTUP = (re.compile(rb"^WARNING: All log messages before absl::InitializeLog\(\) is called"),
               re.compile(rb"^I\d{4} [\d:. ]+\d+ (port|cpu_feature_guard)\.cc:\d+\] "),
               re.compile(rb"^To enable the following instructions: .* rebuild TensorFlow"),
               re.compile(rb"^W\d{4} [\d:. ]+\d+ local_rendezvous\.cc:\d+\] Local rendezvous is aborting"))

    def __init__(self):
        sys.stderr.flush()
        self.saved = os.dup(2)
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self.reader = os.fdopen(read, "rb")
        self.thread = threading.Thread(target=self._pump, name="stderr-filter", daemon=True)
        self.thread.start()

    CONTINUES = (b" ", b"\t", b"\n", b"During handling of the above exception",
                 b"The above exception was the direct cause")

    @classmethod
    def passed(cls, lines: Iterable[bytes]) -> Iterator[bytes]:
        """The lines (or held groups of lines) of `lines` that reach the terminal."""
        held: list[bytes] = []      # a traceback, passed on when it ends without the noise
        failed = False              # a save has failed: no traceback line passes from here on
        for line in lines:
            if failed:      # a save has failed: traceback-shaped lines are the writer threads' noise
                if not (line.startswith(cls.CONTINUES) or b"Traceback (most recent call last):" in line
                        or cls.NOISE in line):
                    yield line
            elif cls.NOISE in line:
                failed, held = True, []
            elif held:
                held.append(line)
                if not line.startswith(cls.CONTINUES) and b"Traceback (most recent call last):" not in line:
                    yield b"".join(held)        # its exception line: not the noise
                    held = []
            elif line.startswith((b" ", b"\t")) or b"Traceback (most recent call last):" in line:
                held = [line]       # a traceback, or the tail of one whose lines another thread interleaved
            elif not any(pattern.match(line) for pattern in cls.STARTUP):
                yield line
        if held:
            yield b"".join(held)

    def _pump(self) -> None:
        for out in self.passed(self.reader):
            os.write(self.saved, out)

    def close(self) -> None:
        if self.thread.is_alive():
            sys.stderr.flush()
            os.dup2(self.saved, 2)      # the pipe's last writer is gone: the pump reads to the end
            self.thread.join(timeout=5)


def wants_verbose(argv: Sequence[str]) -> bool:
    return any(a in ("--verbose", "--verbose=true", "--verbose=True", "--verbose=1") for a in argv)


def run_program(body: Callable[[list[str]], None], argv: Sequence[str] | None = None, *,
                workdir: Callable[[], str | None] = lambda: None) -> None:
    """Runs an absl program whose flags are defined: parses them, calls `body(remaining argv)`, and turns
    any exception into one `error: ...` line and its exit code (unless `--verbose`). `workdir()` names the
    run's directory, for the hint after a full disk."""
    from absl import app, flags
    from absl import logging as absl_logging

    argv = list(sys.argv if argv is None else argv)
    flags.DEFINE_bool("verbose", False, "Show the full traceback of an error instead of one line.")
    verbose = wants_verbose(argv)
    noise = None
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")    # TensorFlow's start-up notices
        absl_logging.get_absl_handler().addFilter(_HideOrbaxErrors())
        noise = _StderrFilter()
    try:
        app.run(body, argv=argv, flags_parser=parse_flags)
    except Exception as error:
        if verbose:
            raise
        _exit_with_one_line(error, workdir, noise)
    finally:
        if noise is not None:
            noise.close()


def _exit_with_one_line(error: Exception, workdir: Callable[[], str | None], noise: "_StderrFilter | None") -> None:
    """Prints `error` as one `error: ...` line and exits with its code."""
    try:
        where = workdir()
    except Exception:     # the workdir flag itself may be what failed
        where = None
    line, code = describe(error, where)
    # Orbax's background writers may still fail while the process exits; the line below says why,
    # and what they print after it goes nowhere.
    threading.excepthook = lambda args: None
    if noise is not None:
        noise.close()
    print(f"error: {line}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), sys.stderr.fileno())
    sys.exit(code)
