"""Run the bad-input table of tests/test_bad_inputs.py as real command lines
against a checkout, and print what each got (exit status, first error line).

    python bench/probe_bad_inputs.py                      # this checkout
    python bench/probe_bad_inputs.py --tree /tmp/before --timeout 60

A row that is still running after ``--timeout`` seconds is reported as
"ran on" (it started training instead of refusing the input).
"""
import argparse
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))

from test_bad_inputs import PROBES, materialise  # noqa: E402


def run(probe, tree, timeout):
    with tempfile.TemporaryDirectory() as tmp:
        args = materialise(probe, tmp)
        env = dict(os.environ, PYTHONPATH=tree, OMP_NUM_THREADS="1")
        try:
            out = subprocess.run([sys.executable, os.path.join(tree, "run_recbole_llm.py"), *args],
                                 cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "ran on", f"still running after {timeout} s"
        lines = [l for l in out.stderr.splitlines() if l.strip()]
        errors = [l for l in lines if "error" in l.lower()]
        last = (errors or lines or [""])[-1].replace(tmp, "<tmp>")
        wrote = [n for n in probe.forbidden if os.path.exists(os.path.join(tmp, n))]
        if wrote:
            last = f"WROTE {wrote}; " + last
        return str(out.returncode), last[:160]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", default=REPO, help="checkout whose run_recbole_llm.py to run")
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    print("| probe | expected | exit | message |")
    print("|---|---|---|---|")
    for probe in PROBES:
        code, message = run(probe, os.path.abspath(args.tree), args.timeout)
        print(f"| {probe.name} | {probe.code} | {code} | {message.replace('|', '/')} |", flush=True)


if __name__ == "__main__":
    main()
