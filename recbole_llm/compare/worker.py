"""One run of a comparison, in its own process (``python -m recbole_llm.compare.worker``).

A separate process per (model, seed) keeps runs apart: RecBole's global
seeds and loggers, torch's thread settings, memory (its peak is this run's
alone), and a crash or an out-of-memory kill takes one row down, not the
comparison.  The job arrives as JSON on stdin; the measured record is
written atomically to ``job["out"]``.
"""
import json
import os
import sys


def main() -> int:
    job = json.loads(sys.stdin.read())
    sys.argv = sys.argv[:1]  # the job's options are the only options
    from recbole_llm.config import Config
    from recbole_llm.errors import InputError
    from recbole_llm.experiment import run_experiment

    try:
        config = Config(model=job["model"], dataset=job["dataset"],
                        config_file_list=job["config_files"], argv=job["argv"])
        record = run_experiment(config, resume_prefix=job["resume_prefix"])
    except InputError as err:
        print(f"recbole-llm: error: {err}", file=sys.stderr)
        return 2
    from recbole_llm.compare.command import SPLIT_KEYS
    from recbole_llm.fingerprint import _plain

    record.update(model=job["model"], seed=job["seed"], key=job["key"], error=None,
                  split={k: _plain(config.final_config_dict.get(k)) for k in SPLIT_KEYS})
    with open(job["out"] + ".tmp", "w") as f:
        json.dump(record, f, indent=1)
    os.replace(job["out"] + ".tmp", job["out"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
