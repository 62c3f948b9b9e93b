"""Recheck mutmut's survivors against new test files, in one process.

For when ``benchmarks/mutation.py --resume`` cannot finish (the loaded 2-core machine): it
imports the scratch copy's mutated package and, for each mutant named in a list
(``### name`` lines, as in ``survivors.txt``), sets mutmut's ``MUTANT_UNDER_TEST`` switch
(read at every call) and runs that module's observed test file(s) with ``-x``. A mutant
counts as killed only when a test fails; the files must pass with no mutant first. A
mutant that survives here may still be killed by the package's other tests (conservative).

    cd build/mutation/metrics/mutants && PYTHONPATH=$PWD python ../../../../benchmarks/mutation_recheck.py ../survivors.txt out.jsonl

Any other package: name the test files after the two paths (copied into ``mutants/tests``
first); every mutant is then rechecked against those files. Tests that were in the
package's selection when mutmut ran already passed on the survivor, so only the files
added since need to run:

    cd build/mutation/methods/mutants && PYTHONPATH=$PWD python ../../../../benchmarks/mutation_recheck.py ../survivors.txt out.jsonl tests/methods/test_new.py
"""

import json
import os
import sys
import time

import pytest

FILES = {
    "compare": ["tests/metrics/test_compare_observed.py"],
    "frechet": ["tests/metrics/test_frechet_observed.py", "tests/metrics/test_statistics_observed.py"],
    "statistics": ["tests/metrics/test_statistics_observed.py"],
    "_checks": ["tests/metrics/test_statistics_observed.py", "tests/metrics/test_kid_bootstrap_modes_observed.py"],
    "memorization": ["tests/metrics/test_memorization_observed.py"],
}
DEFAULT = ["tests/metrics/test_kid_bootstrap_modes_observed.py"]  # kid, bootstrap, modes, inception_score, translation


def main() -> None:
    names = [line.split(":")[0].replace("### ", "").strip() for line in open(sys.argv[1]) if line.startswith("### ")]
    out = open(sys.argv[2], "a")
    given = sys.argv[3:]  # test files for every mutant; none: the metrics package's observed files per module
    os.environ["MUTANT_UNDER_TEST"] = ""
    if int(pytest.main((given or sorted({f for v in FILES.values() for f in v} | set(DEFAULT))) + ["-q", "-p", "no:cacheprovider", "-x"])) != 0:
        sys.exit("the test files fail without a mutant")
    for name in names:
        os.environ["MUTANT_UNDER_TEST"] = name
        start = time.time()
        rc = pytest.main((given or FILES.get(name.split(".")[2], DEFAULT)) + ["-q", "-p", "no:cacheprovider", "-x", "--no-header"])
        out.write(json.dumps({"mutant": name, "rc": int(rc), "killed": int(rc) == 1, "s": round(time.time() - start, 1)}) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
