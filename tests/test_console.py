"""A quiet console: library output of a job goes to its console.log; --help and tab completion."""

import os
import subprocess
import sys

from maet.runtime import console
from maet.schema.resolvers import PROJECT_ROOT


def launch(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PROJECT_ROOT / "launch.py"), *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def test_muted_output_goes_to_the_jobs_console_log_and_only_when_quiet(tmp_path, capfd):
    log = tmp_path / "console.log"
    with console.quiet(True, log):
        with console.muted():
            print("from python")
            os.system("echo from a child process 1>&2")
        print("after")
    with console.quiet(False, log), console.muted():
        print("loud")
    out, err = capfd.readouterr()
    assert "after" in out and "loud" in out and "from" not in out + err
    assert "from python" in log.read_text() and "from a child process" in log.read_text()



def test_help_lists_groups_and_the_new_keys_with_their_docs():
    proc = launch("--help")
    assert proc.returncode == 0
    for text in ("== Config groups", "lang: bn, en, es", "report.quiet", "tracker.curve_every", "console.log"):
        assert text in proc.stdout, text


def test_tab_completion_installs_and_completes_groups_and_keys():
    install = launch("-sc", "install=bash")
    assert install.returncode == 0 and "hydra_bash_completion" in install.stdout
    line = "python launch.py lang="
    query = launch("-sc", "query=bash", env={"COMP_LINE": line, "COMP_POINT": str(len(line))})
    assert query.returncode == 0 and "lang=sw" in query.stdout and "lang=bn" in query.stdout
    line = "python launch.py merge.al"
    assert "merge.alpha=" in launch("-sc", "query=bash", env={"COMP_LINE": line, "COMP_POINT": str(len(line))}).stdout
