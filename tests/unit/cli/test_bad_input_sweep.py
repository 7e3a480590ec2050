"""The bad-input sweep (see sweepkit): every generated case ends in one sentence and a non-zero exit code.

`.venv/bin/pytest tests/unit/cli/test_bad_input_sweep.py -s` prints the counts.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from sweepkit import MAX_MESSAGE, UNREACHABLE, all_cases, run_case, sweep_home


def test_every_bad_input_is_one_sentence_and_a_non_zero_exit(tmp_path: Path) -> None:
    cases = all_cases()
    assert len(cases) >= 500
    assert len({case.id for case in cases}) == len(cases)
    with sweep_home(tmp_path):
        outcomes = [run_case(case, tmp_path) for case in cases]
    failures = [
        f"{o.case.id}: {', '.join(o.problems())}: {o.stderr[:200]!r}" for o in outcomes if o.problems()
    ]
    counts = Counter(
        {
            "cases": len(outcomes),
            "non-zero exit": sum(o.code != 0 for o in outcomes),
            "one line on stderr": sum(len(o.stderr.strip().splitlines()) == 1 for o in outcomes),
            f"at most {MAX_MESSAGE} characters": sum(len(o.stderr) <= MAX_MESSAGE for o in outcomes),
            "no unexpected error or traceback": sum(
                "Unexpected error" not in o.stderr and "Traceback" not in o.stderr and not o.logged
                for o in outcomes
            ),
            "refused before any server": sum(UNREACHABLE not in o.stderr for o in outcomes),
        }
    )
    print("\n" + "\n".join(f"{name:>36}: {count}" for name, count in counts.items()))
    assert not failures, "\n".join(failures)
