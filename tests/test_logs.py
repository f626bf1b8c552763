"""Attempt logs on real files: the stdout a map source captures, and what happens past its cap."""

from __future__ import annotations

from pathlib import Path

from nagare.logs import MAX_STDOUT_BYTES, LogFiles


def capture(logs: LogFiles, lines: list[str], resume: bool = False) -> None:
    """One map-source attempt (`r`, `src`, attempt 1) printing `lines` on stdout."""
    log = logs.open_attempt("r", "src", 1, capture_stdout=True, resume=resume)
    for line in lines:
        log.on_line("stdout", line)
    log.close()


def test_the_stdout_cap_defaults_to_64_mib(tmp_path: Path) -> None:
    assert MAX_STDOUT_BYTES == 64 * 1024 * 1024
    assert LogFiles(str(tmp_path)).max_stdout_bytes == MAX_STDOUT_BYTES


def test_stdout_within_the_cap_is_kept_whole(tmp_path: Path) -> None:
    logs = LogFiles(str(tmp_path), max_stdout_bytes=12)
    capture(logs, ["12345", "67890"])  # 12 bytes with their newlines: exactly the cap
    assert logs.read_stdout("r", "src", 1) == "12345\n67890\n"
    assert logs.stdout_cut_at("r", "src", 1) is None


def test_stdout_past_the_cap_is_marked_cut_and_noted_in_the_log(tmp_path: Path) -> None:
    logs = LogFiles(str(tmp_path), max_stdout_bytes=12)
    capture(logs, ["12345", "67890", "x", "y"])
    restarted = LogFiles(str(tmp_path))  # the mark outlives the attempt and the server
    assert restarted.stdout_cut_at("r", "src", 1) == 12
    assert not restarted.read_stdout("r", "src", 1)  # nothing left to parse by mistake
    text = Path(restarted.path("r", "src", 1)).read_text()
    assert text == (
        "12345\n67890\nx\n"
        "[nagare] the captured stdout was cut at 12 bytes, the most a map source may print "
        "(the map task over it will fail)\n"
        "y\n"
    )


def test_the_cap_counts_bytes_not_characters(tmp_path: Path) -> None:
    logs = LogFiles(str(tmp_path), max_stdout_bytes=12)
    capture(logs, ["ééééé"])  # 5 characters, 11 bytes with the newline
    assert logs.stdout_cut_at("r", "src", 1) is None
    capture(logs, ["éééééé"])  # 13 bytes
    assert logs.stdout_cut_at("r", "src", 1) == 12


def test_a_resumed_attempt_counts_what_it_captured_before(tmp_path: Path) -> None:
    """A restarted master reopens a remote attempt's log: the cap covers the whole attempt."""
    logs = LogFiles(str(tmp_path), max_stdout_bytes=12)
    capture(logs, ["12345"])
    capture(logs, ["67890"], resume=True)
    assert logs.stdout_cut_at("r", "src", 1) is None
    capture(logs, ["abcde"], resume=True)
    assert logs.stdout_cut_at("r", "src", 1) == 12


def test_a_resumed_attempt_that_was_cut_stays_cut(tmp_path: Path) -> None:
    logs = LogFiles(str(tmp_path), max_stdout_bytes=4)
    capture(logs, ["too long"])
    capture(logs, ["[]"], resume=True)
    assert logs.stdout_cut_at("r", "src", 1) == 4
    assert not logs.read_stdout("r", "src", 1)


def test_output_of_a_task_that_feeds_no_map_is_never_capped(tmp_path: Path) -> None:
    logs = LogFiles(str(tmp_path), max_stdout_bytes=4)
    log = logs.open_attempt("r", "plain", 1)
    log.on_line("stdout", "a line longer than the cap")
    log.close()
    assert logs.stdout_cut_at("r", "plain", 1) is None
    assert logs.read_stdout("r", "plain", 1) is None
    assert "[nagare]" not in Path(logs.path("r", "plain", 1)).read_text()
