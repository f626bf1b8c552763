"""Task outputs: what an attempt wrote to `$NAGARE_OUTPUT` (`NAME=value` lines, or multi-line
`NAME<<DELIM` … `DELIM` blocks, GitHub Actions' syntax) and its stdout under `output: NAME`,
checked against the limits. Pure; the executors' hosts read the file (nagare/logs.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from nagare.engine.assignment import size_text
from nagare.models import Outcome
from nagare.patterns import OUTPUT_NAME

MAX_VALUE_BYTES = 1 << 20  # one output's value
MAX_OUTPUTS = 100  # outputs of one task
# the file itself: every value at its largest, with room for names and delimiters
MAX_FILE_BYTES = MAX_OUTPUTS * (MAX_VALUE_BYTES + 1024)
OUTPUT_FILE_NAME = "outputs"  # a container's file, inside its mounted per-attempt folder
CONTAINER_OUTPUT_DIR = "/nagare/output"


class OutputError(ValueError):
    """Outputs that break a rule; the message says which and what was expected."""


def parse_output_file(text: str) -> dict[str, str]:
    """The outputs written to $NAGARE_OUTPUT (a later line of the same name wins)."""
    outputs: dict[str, str] = {}
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    index = 0
    while index < len(lines):
        line = lines[index].removesuffix("\r")
        index += 1
        if not line.strip():
            continue
        heredoc = line.find("<<")
        equals = line.find("=")
        if heredoc > 0 and (equals < 0 or heredoc < equals):
            name, delimiter = line[:heredoc], line[heredoc + 2 :]
            _check_name(name, index)
            if not delimiter:
                raise OutputError(f"line {index}: '{name}<<' needs a delimiter (NAME<<EOF)")
            body = []
            while index < len(lines) and lines[index].removesuffix("\r") != delimiter:
                body.append(lines[index].removesuffix("\r"))
                index += 1
            if index >= len(lines):
                raise OutputError(
                    f"'{name}<<{delimiter}' is never closed (expected a line '{delimiter}')"
                )
            index += 1
            outputs[name] = "\n".join(body)
        elif equals > 0:
            name = line[:equals]
            _check_name(name, index)
            outputs[name] = line[equals + 1 :]
        else:
            shown = line if len(line) <= 60 else line[:59] + "\u2026"
            raise OutputError(
                f"line {index}: expected NAME=value or NAME<<DELIMITER, found '{shown}'"
            )
    check_outputs(outputs)
    return outputs


def check_outputs(outputs: dict[str, str]) -> None:
    if len(outputs) > MAX_OUTPUTS:
        raise OutputError(f"{len(outputs)} outputs; a task may publish at most {MAX_OUTPUTS}")
    for name, value in outputs.items():
        size = len(value.encode())
        if size > MAX_VALUE_BYTES:
            raise OutputError(
                f"output '{name}' is {size} bytes; a value may hold at most "
                f"{size_text(MAX_VALUE_BYTES)}"
            )


def stdout_output(name: str, stdout: str | None, cut: bool) -> str:
    """The value of `output: NAME`: the whole stdout, its trailing newline trimmed."""
    if cut:
        raise OutputError(
            f"output '{name}' (the task's stdout) is larger than {size_text(MAX_VALUE_BYTES)}"
        )
    return (stdout or "").removesuffix("\n")


def with_outputs(
    outcome: Outcome, file_text: str | None, name: str, stdout: str | None, stdout_cut: bool
) -> Outcome:
    """A successful outcome with its outputs (the file's, then `output: NAME`), or failed
    with the reason when they break a rule; any other outcome publishes nothing."""
    if not outcome.succeeded:
        return replace(outcome, outputs=None) if outcome.outputs else outcome
    try:
        outputs = dict(outcome.outputs or {})
        if file_text is not None:
            outputs.update(parse_output_file(file_text))
        if name:
            outputs[name] = stdout_output(name, stdout, stdout_cut)
        check_outputs(outputs)
    except OutputError as exc:
        return replace(outcome, outputs=None, error=f"outputs: {exc}")
    return replace(outcome, outputs=outputs or None)


def masked_outputs(outcome: Outcome, mask: Callable[[str], str]) -> Outcome:
    """The outcome with every output value passed through `mask` (its secrets as *****)."""
    if not outcome.outputs:
        return outcome
    return replace(outcome, outputs={name: mask(value) for name, value in outcome.outputs.items()})


def _check_name(name: str, line: int) -> None:
    if not OUTPUT_NAME.match(name):
        raise OutputError(
            f"line {line}: '{name[:60]}' is not a valid output name "
            "(expected letters, digits and '_', not starting with a digit)"
        )
