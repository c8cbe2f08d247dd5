"""Golden runs: what a scenario produced (metrics rows, summary, final weights), timings removed, so that a
restructuring can prove behaviour unchanged.

    python tests/golden.py record DIR [SCENARIO...]    # every shipped scenario by default (short rounds)
    python tests/golden.py compare DIR [SCENARIO...]   # exit 1 and name what differs

`tests/test_golden.py` keeps the comparison for a few short scenarios against `tests/golden/`.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

# Short-round overrides: enough rounds to exercise every feature (unlearning requests, budgets, faults).
SHORT = {
    "aggregate-labels": ["run.rounds=4"],
    "aggregate-responses": ["run.rounds=4"],
    "bench-w1": ["run.rounds=3"],
    "bench-w2": ["run.rounds=2"],
    "bench-w3": ["run.rounds=2"],
    "client-dp": ["run.rounds=5"],
    "cnn-digits-pathological": ["run.rounds=3"],
    "diabetes-regression": ["run.rounds=6"],
    "dp-sgd": ["run.rounds=3"],
    "feature-skew-wine": ["run.rounds=6"],
    "fedld-leaf-synthetic": ["run.rounds=5"],
    "fedld-noniid": ["run.rounds=5"],
    "fedprox-leaf-synthetic": ["run.rounds=5"],
    "quickstart": ["run.rounds=5"],
    "unlearn-class": ["run.rounds=4", "unlearning.requests.0.at_round=2"],
    "unlearn-client": ["run.rounds=4", "unlearning.requests.0.at_round=2"],
    "unlearn-regression": ["run.rounds=4", "unlearning.requests.0.at_round=2"],
}
# Goldens pin the sequential engine (one client after another); tests/test_cohort.py holds the vectorised engine
# (run.vectorize, the default where it applies) to it within float rounding.
SEQUENTIAL = ["run.vectorize=false"]
TIMING = {"time_s", "wall_time_s", "startup_s", "speedup"}


def _untimed(value):
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def fingerprint(name: str, overrides: list[str] | None = None) -> dict:
    """Run shipped scenario `name` (with its short overrides) and return what it produced, timings removed."""
    import fedsim
    from fedsim.scenario import Scenario

    scenario = Scenario.load(name, SHORT.get(name, []) + SEQUENTIAL + list(overrides or []))
    with tempfile.TemporaryDirectory() as tmp:
        result = fedsim.run(scenario, out=Path(tmp) / name)
    summary = _untimed(result.summary)
    summary.pop("runtime", None)
    weights = {k: hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest()[:16]
               for k, v in sorted(result.state_dict.items())}
    return {"metrics": _untimed(result.metrics), "summary": summary, "weights": weights}


def differences(expected: dict, actual: dict) -> list[str]:
    out = []
    for part in ("metrics", "summary", "weights"):
        if expected[part] != actual[part]:
            out.append(part)
    return out


def main(argv: list[str]) -> int:
    command, folder, names = argv[0], Path(argv[1]), argv[2:] or sorted(SHORT)
    folder.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in names:
        got = fingerprint(name)
        path = folder / f"{name}.json"
        if command == "record":
            path.write_text(json.dumps(got, indent=1, sort_keys=True))
            print(f"recorded {name}", flush=True)
        else:
            diff = differences(json.loads(path.read_text()), got)
            print(f"{name}: {'same' if not diff else 'DIFFERENT ' + ', '.join(diff)}", flush=True)
            failed += [name] if diff else []
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
