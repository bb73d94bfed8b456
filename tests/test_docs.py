"""The documentation's blocks written from the code (not from a run) equal what the code gives
now, checked in seconds: a change of code that moves them fails here, not at the end of the
end-to-end run that checks the quoted run numbers."""
import subprocess
import sys

from conftest import ROOT

SCRIPT = ROOT / "workflow/scripts/quote_results.py"


def test_the_code_tree_in_the_readme_is_the_codes():
    readme = ROOT / "README.md"
    assert "<!-- written from the code: code-tree -->" in readme.read_text()
    check = subprocess.run([sys.executable, str(SCRIPT), "--check", "--only", "code-tree", str(readme)],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, "README.md's code-tree differs from the code (rewrite it with " \
        "`python workflow/scripts/quote_results.py --only code-tree README.md`):\n" + check.stdout + check.stderr
